# %preun for mta-sts-policyd (what %systemd_preun does).
# $1 = 0 on erase, 1 on upgrade: only an erase stops and disables the units.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now mta-sts-policyd.service \
        mta-sts-policyd-socketmap.socket mta-sts-policyd-tcp-table.socket >/dev/null 2>&1 || :
fi
exit 0
