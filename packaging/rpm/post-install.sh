# %post for mta-sts-policyd (what %systemd_post does; cargo-generate-rpm has no rpm macros).
# $1 = 1 on first install, 2 on upgrade. Units follow the distribution's presets on first
# install (Fedora/RHEL: disabled unless a preset enables them). The .socket units are optional.
if [ "$1" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload preset mta-sts-policyd.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
