#!/usr/bin/perl
# The image test's clock tool (tests/image only), for the guest's clock checks (clock.sh). Plain
# perl-base (in every Debian image): raw system calls, no modules.
#
#   clock-tool.pl clocks                 CLOCK_MONOTONIC and CLOCK_BOOTTIME, seconds ("mono boot")
#   clock-tool.pl tiny COUNT USEC MS     COUNT steps of the wall clock by +USEC microseconds, one
#                                        every MS milliseconds; prints "COUNT SECONDS_TAKEN"
#
# The tiny steps use adjtimex(ADJ_SETOFFSET), which is how chronyd and ntpd step a clock: the
# kernel adds the offset in one go (no read-then-set race that would make each step a little
# larger or smaller), and it is a clock set like settimeofday (timerfds with
# TFD_TIMER_CANCEL_ON_SET are cancelled), not a slew. Only ever run inside the test guest.
use strict;
use warnings;

# x86_64 system call numbers and constants (asm/unistd_64.h, linux/timex.h, linux/time.h).
my $SYS_adjtimex = 159;
my $SYS_clock_gettime = 228;
my $ADJ_SETOFFSET = 0x0100;
my $CLOCK_MONOTONIC = 1;
my $CLOCK_BOOTTIME = 7;
my $TIMEX_SIZE = 208;      # sizeof(struct timex)
my $TIMEX_TIME_AT = 72;    # offsetof(struct timex, time)

sub now_of {
  my ($clock) = @_;
  my $ts = "\0" x 16;
  syscall($SYS_clock_gettime, $clock, $ts) == 0 or die "clock_gettime($clock): $!\n";
  my ($s, $ns) = unpack("q q", $ts);
  return $s + $ns / 1e9;
}

sub step_wall_clock {
  my ($usec) = @_;
  my $sec = int($usec / 1_000_000);
  $sec -= 1 if $usec < $sec * 1_000_000;    # the kernel wants 0 <= tv_usec < 1e6
  my $tx = "\0" x $TIMEX_SIZE;
  substr($tx, 0, 4) = pack("l", $ADJ_SETOFFSET);
  substr($tx, $TIMEX_TIME_AT, 16) = pack("q q", $sec, $usec - $sec * 1_000_000);
  syscall($SYS_adjtimex, $tx) >= 0 or die "adjtimex(ADJ_SETOFFSET, $usec us): $!\n";
}

my $cmd = shift @ARGV // '';
if ($cmd eq 'clocks') {
  printf "%.6f %.6f\n", now_of($CLOCK_MONOTONIC), now_of($CLOCK_BOOTTIME);
} elsif ($cmd eq 'tiny') {
  my ($count, $usec, $ms) = @ARGV;
  die "usage: tiny COUNT USEC MS\n" unless defined $ms;
  my $start = now_of($CLOCK_MONOTONIC);
  for (1 .. $count) {
    step_wall_clock($usec);
    select(undef, undef, undef, $ms / 1000);
  }
  printf "%d %.2f\n", $count, now_of($CLOCK_MONOTONIC) - $start;
} else {
  die "usage: clock-tool.pl clocks | tiny COUNT USEC MS\n";
}
