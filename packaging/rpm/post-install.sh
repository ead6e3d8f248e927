# %post for mta-sts-policyd (what %systemd_post does; cargo-generate-rpm has no rpm macros).
# $1 = 1 on first install, 2 on upgrade. Units follow the distribution's presets on first
# install (Fedora/RHEL: disabled unless a preset enables them). The socketmap socket unit is
# preset together with the service, which pulls it in anyway (Sockets=): systemd then holds the
# Postfix port while the daemon restarts. The tcp_table socket unit is optional.
if [ "$1" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload preset mta-sts-policyd.service \
        mta-sts-policyd-socketmap.socket >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
# Upgrading from a version without the socketmap socket unit in use: the running daemon holds
# 127.0.0.1:8461 itself, so the socket could not bind it on the restart in %postun. Stop the
# daemon, enable and start the socket, and start the daemon on it now.
if [ "$1" -ge 2 ] && [ -d /run/systemd/system ] &&
    ! systemctl is-active --quiet mta-sts-policyd-socketmap.socket &&
    systemctl is-active --quiet mta-sts-policyd.service; then
    systemctl stop mta-sts-policyd.service >/dev/null 2>&1 || :
    systemctl enable --now mta-sts-policyd-socketmap.socket >/dev/null 2>&1 || :
    systemctl start mta-sts-policyd.service >/dev/null 2>&1 || :
fi
exit 0
