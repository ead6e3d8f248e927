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
# An existing state directory that is not the package user's (`mta-sts-policyd serve` run as
# root creates it root-owned, 0700) is taken over: the service, running as the package user,
# could not write its journal otherwise. Root closes it first, so that nobody can plant anything
# while it is handed over, then hands over only the daemon's own files, never through a link
# (find -P, chown -h) and never a file with several hard links (it could be one to a file
# elsewhere).
take_over_state_dir() {
    dir=/var/lib/mta-sts-policyd
    [ -d "$dir" ] && [ ! -L "$dir" ] || return 0
    [ "$(stat -c %U:%G "$dir")" != mta-sts-policyd:mta-sts-policyd ] || return 0
    chown -h root:root "$dir"
    chmod 0700 "$dir"
    find -P "$dir" -mindepth 1 -maxdepth 1 -type f -links 1 \
        \( -name policies.journal -o -name policies.journal.tmp -o -name lock \) \
        -exec chown -h mta-sts-policyd:mta-sts-policyd {} +
    chown -h mta-sts-policyd:mta-sts-policyd "$dir"
    chmod 0750 "$dir"
}

take_over_state_dir

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
