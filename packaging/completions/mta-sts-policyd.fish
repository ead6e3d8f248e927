# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_mta_sts_policyd_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_mta_sts_policyd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mta_sts_policyd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_mta_sts_policyd_using_subcommand
    set -l cmd (__fish_mta_sts_policyd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -s V -l version -d 'Print version'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -f -a "serve" -d 'Run the daemon: answer Postfix on the configured (or socket-activated) listeners'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -f -a "query" -d 'Run one discovery for DOMAIN now (no daemon, no cache) and show what Postfix would get'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -f -a "check-config" -d 'Check the configuration file and print the effective settings'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -f -a "check" -d 'Check Postfix\'s configuration (via postconf) against this daemon\'s; exit 1 on findings'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -f -a "ctl" -d 'Inspect and steer the running daemon\'s cache through its control socket'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL (the packages install all three)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand serve" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand serve" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand query" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand query" -l json -d 'Print one JSON object instead of text'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand query" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand check-config" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand check" -l postconf -d 'The postconf command' -r
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand check" -l postfix-config -d 'Postfix\'s configuration directory (postconf -c)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand check" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand check" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "status" -d 'Version, uptime, configuration, listeners, entries by mode'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "stats" -d 'Counters and gauges (the same as /metrics)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "list" -d 'Cached domains'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "show" -d 'One domain: TXT id, policy, times, last error, hits, and the exact answer per map'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "refresh" -d 'Run a discovery now and print the result'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "evict" -d 'Remove one domain from the cache and the journal'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "purge" -d 'Remove every entry'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "export" -d 'Every cached policy as JSON lines (for `import` on another host)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "import" -d 'Merge policies from JSON lines (a file, or standard input), keeping the freshest fetch'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "reload" -d 'Re-read the configuration file'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and not __fish_seen_subcommand_from status stats list show refresh evict purge export import reload help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from status" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from status" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from status" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from stats" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from stats" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from stats" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from list" -l mode -d 'Only entries of this kind: enforce, testing, none or negative' -r
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from list" -l expiring-within -d 'Only policies expiring within this time ("1d", "12h")' -r
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from list" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from list" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from list" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from show" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from show" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from show" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from refresh" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from refresh" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from refresh" -l all -d 'Every cached policy (bounded by [refresh] concurrency)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from refresh" -l local -d 'With [fleet]: this daemon only, not every daemon of the fleet'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from refresh" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from refresh" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from evict" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from evict" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from evict" -l local -d 'With [fleet]: this daemon only (its next lookup may take the shared entry), not every daemon of the fleet and the shared entry'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from evict" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from evict" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from purge" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from purge" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from purge" -l yes -d 'Confirm: every cached policy is dropped, and mail goes without MTA-STS until they are fetched again'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from purge" -l local -d 'With [fleet]: this daemon only, not every daemon of the fleet and the shared cache'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from purge" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from export" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from export" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from export" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from import" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from import" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from import" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from reload" -l socket -d 'The control socket (default: [control] socket from the configuration)' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from reload" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from reload" -l json -d 'Print the daemon\'s JSON replies instead of a table'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from reload" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "status" -d 'Version, uptime, configuration, listeners, entries by mode'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Counters and gauges (the same as /metrics)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "list" -d 'Cached domains'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "show" -d 'One domain: TXT id, policy, times, last error, hits, and the exact answer per map'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "refresh" -d 'Run a discovery now and print the result'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "evict" -d 'Remove one domain from the cache and the journal'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Remove every entry'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "export" -d 'Every cached policy as JSON lines (for `import` on another host)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "import" -d 'Merge policies from JSON lines (a file, or standard input), keeping the freshest fetch'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "reload" -d 'Re-read the configuration file'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand ctl; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand completions" -s c -l config -d 'Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that default is absent do the built-in defaults apply; a named file must exist]' -r -F
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand completions" -s h -l help -d 'Print help'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve query check-config check ctl completions help" -f -a "serve" -d 'Run the daemon: answer Postfix on the configured (or socket-activated) listeners'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve query check-config check ctl completions help" -f -a "query" -d 'Run one discovery for DOMAIN now (no daemon, no cache) and show what Postfix would get'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve query check-config check ctl completions help" -f -a "check-config" -d 'Check the configuration file and print the effective settings'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve query check-config check ctl completions help" -f -a "check" -d 'Check Postfix\'s configuration (via postconf) against this daemon\'s; exit 1 on findings'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve query check-config check ctl completions help" -f -a "ctl" -d 'Inspect and steer the running daemon\'s cache through its control socket'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve query check-config check ctl completions help" -f -a "completions" -d 'Print the shell completion script for SHELL (the packages install all three)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and not __fish_seen_subcommand_from serve query check-config check ctl completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "status" -d 'Version, uptime, configuration, listeners, entries by mode'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "stats" -d 'Counters and gauges (the same as /metrics)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "list" -d 'Cached domains'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "show" -d 'One domain: TXT id, policy, times, last error, hits, and the exact answer per map'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "refresh" -d 'Run a discovery now and print the result'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "evict" -d 'Remove one domain from the cache and the journal'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "purge" -d 'Remove every entry'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "export" -d 'Every cached policy as JSON lines (for `import` on another host)'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "import" -d 'Merge policies from JSON lines (a file, or standard input), keeping the freshest fetch'
complete -c mta-sts-policyd -n "__fish_mta_sts_policyd_using_subcommand help; and __fish_seen_subcommand_from ctl" -f -a "reload" -d 'Re-read the configuration file'
