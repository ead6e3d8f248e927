# %pre for mta-sts-policyd: create the system user the service runs as (idempotent).
# $1 = 1 on first install, 2 on upgrade.
getent group mta-sts-policyd >/dev/null || groupadd -r mta-sts-policyd
getent passwd mta-sts-policyd >/dev/null || \
    useradd -r -g mta-sts-policyd -d /var/lib/mta-sts-policyd -M -s /sbin/nologin \
        -c "MTA-STS policy daemon" mta-sts-policyd
exit 0
