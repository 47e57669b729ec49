#!/usr/bin/perl
# Runs ldirectord's own configuration parser and health checks on a configuration file,
# without ipvsadm, a daemon or a kernel with IPVS: ldirectord has no "check the
# configuration" option, so this loads /usr/sbin/ldirectord, replaces its main program
# (between "# main code" and "# functions") with the one below, and calls the functions the
# daemon calls: read_config (which exits 2 with a message on any error), ld_setup, then one
# round of _check_real for every real server, printing what the daemon would do:
#
#   real 127.0.0.1:7000 up
#
# Usage: harness.pl /usr/sbin/ldirectord CONFIG
use strict;
use warnings;

my ($ldirectord, $config) = @ARGV;
die "usage: $0 /usr/sbin/ldirectord CONFIG\n" unless defined $config;
open(my $fh, '<', $ldirectord) or die "$ldirectord: $!\n";
my $source = do { local $/; <$fh> };
close($fh);

my $main = <<'MAIN';
# main code (replaced by tests/ldirectord/harness.pl)
$CONFIG = $ENV{LDIRECTORD_HARNESS_CONFIG};
$CFGNAME = "harness";
$DEBUG = 0;
$DAEMON_STATUS = $DAEMON_STATUS_STARTING;
{
	no warnings 'redefine';
	# Keep logs on stderr instead of the log file or syslog.
	*ld_log = sub { print STDERR "ld_log: @_\n"; };
	# Report the decision instead of changing the IPVS table.
	*service_set = sub {
		my ($v, $r, $state) = @_;
		print "real $$r{server}:$$r{port} $state\n";
	};
}
read_config();
ld_setup();
foreach my $v (@VIRTUAL) {
	foreach my $r (@{$$v{real}}) {
		_check_real($v, $r);
	}
}
exit(0);
# functions
MAIN

$source =~ s/^# main code\n.*?^# functions\n/$main/ms
	or die "the layout of $ldirectord changed: no '# main code' ... '# functions' section\n";
$ENV{LDIRECTORD_HARNESS_CONFIG} = $config;
# Silence "used only once" noise from the daemon's own source; errors still die.
local $SIG{__WARN__} = sub { print STDERR "perl warning: $_[0]"; };
eval $source;
die "ldirectord failed: $@" if $@;
