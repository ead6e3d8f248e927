# %postun for mta-sts-policyd (what %systemd_postun_with_restart does).
# $1 = 0 on erase, 1 on upgrade. The policy cache in /var/lib/mta-sts-policyd and the
# mta-sts-policyd user are left in place (RPM has no purge).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart mta-sts-policyd.service >/dev/null 2>&1 || :
    fi
fi
exit 0
