#!/usr/bin/env bash
# Starts (or stops) a private Postfix instance on loopback for benchmarks and tests.
#   postfix-instance.sh start DIR PORT [RELAYHOST]   e.g. RELAYHOST=[127.0.0.1]:2526
#   postfix-instance.sh stop DIR
# The instance keeps its config and queue under DIR and listens only on 127.0.0.1:PORT.
# It uses Postfix's default durability (fsync of every queue file).
set -euo pipefail
cmd=$1 dir=$2
case "$cmd" in
stop)
  postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
  exit 0
  ;;
start) ;;
*) echo "usage: $0 start DIR PORT [RELAYHOST] | stop DIR" >&2; exit 2 ;;
esac
port=$3 relay=${4:-}
mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
# Postfix drops to its own user before opening files under data/: it must reach them.
chmod 0755 "$dir"
cp /etc/postfix/master.cf "$dir/etc/master.cf"
# Replace the default listener with one on our loopback port.
sed -i -E 's/^smtp( +)inet/#smtp\1inet/' "$dir/etc/master.cf"
echo "127.0.0.1:$port inet n - n - - smtpd" >>"$dir/etc/master.cf"
cat >"$dir/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix-bench.localhost
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = $relay
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtp_destination_concurrency_limit = 20
default_destination_concurrency_limit = 20
local_recipient_maps =
alias_maps =
alias_database =
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
biff = no
message_size_limit = 52428800
CF
chown -R postfix "$dir/queue" "$dir/data" 2>/dev/null || true
postfix -c "$dir/etc" set-permissions >/dev/null 2>&1 || true
postfix -c "$dir/etc" check >/dev/null 2>&1 || true
postfix -c "$dir/etc" start >/dev/null 2>&1
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
  sleep 0.1
done
echo "postfix did not start listening on 127.0.0.1:$port (see $dir/maillog)" >&2
exit 1
