#!/usr/bin/env bash
# Log lines are `event=name key=value ...`: every spdlog call in the production folders
# (core agent tpm renewers reloaders) whose format is a string literal must start it with
# `event=`. Prints each offender as file:line: level "format", exits 1 if there is any.
# Run by CTest (log_events_test). perl-base is Essential on Debian: no extra package.
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"

sources() { find core agent tpm renewers reloaders -type f \( -name '*.h' -o -name '*.cpp' \) | sort; }

sources | xargs perl -0777 -ne '
  while (/(?:->|\.)\s*(trace|debug|info|warn|error|critical)\s*\(\s*"((?:[^"\\]|\\.)*)"/g) {
    $calls++;
    next if substr($2, 0, 6) eq "event=";
    my $line = 1 + (substr($_, 0, $-[0]) =~ tr/\n//);
    print "$ARGV:$line: $1 \"$2\"\n";
    $bad++;
  }
  END {
    if ($bad) { print STDERR "$bad of $calls log formats do not start with event=\n"; exit 1 }
  }' || exit 1
