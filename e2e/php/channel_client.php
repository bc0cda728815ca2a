<?php
// A small PHP Channel client for the tests: stream_socket_client, serialize(), unserialize().
//   publish HOST:PORT CHANNEL JSON_DATA   php-fpm style: connect, write one framed publish, close
//   listen HOST:PORT CHANNEL COUNT        subscribe, print "ready", then COUNT events as JSON lines
//   semantics HOST:PORT                   the Channel server's commands among PHP clients; "ok"
error_reporting(E_ALL);
set_error_handler(function ($no, $str) { throw new ErrorException($str, 0, $no); });

function conn($addr) {
    $s = stream_socket_client("tcp://$addr", $code, $msg, 5);
    if (!$s) { fwrite(STDERR, "connect: $msg\n"); exit(2); }
    stream_set_timeout($s, 5);
    return $s;
}
function frame($body) { return pack('N', 4 + strlen($body)) . $body; }
function send($s, $cmd) { fwrite($s, frame(serialize($cmd))); }
function recv_frame($s) {
    $head = fread_all($s, 4);
    if ($head === null) return null;
    $len = unpack('N', $head)[1];
    return $len > 4 ? fread_all($s, $len - 4) : '';
}
function fread_all($s, $n) {
    $buf = '';
    while (strlen($buf) < $n) {
        $chunk = fread($s, $n - strlen($buf));
        if ($chunk === '' || $chunk === false) {
            $meta = stream_get_meta_data($s);
            if ($meta['timed_out'] || feof($s)) return null;
            continue;
        }
        $buf .= $chunk;
    }
    return $buf;
}
function recv($s) { $b = recv_frame($s); return $b === null ? null : unserialize($b); }
function check($cond, $what) { if (!$cond) { fwrite(STDERR, "FAILED: $what\n"); exit(1); } }
// Subscribes and waits until the server has applied it: an own event comes back.
function subscribe_ready($s, $channels) {
    $probe = 'ready-' . bin2hex(random_bytes(4));
    send($s, ['type' => 'subscribe', 'channels' => array_merge($channels, [$probe])]);
    send($s, ['type' => 'publish', 'channels' => [$probe], 'data' => 1]);
    $m = recv($s);
    check($m === ['type' => 'event', 'channel' => $probe, 'data' => 1], "probe on $probe");
}
function silent($s) {
    stream_set_timeout($s, 0, 300000);
    $b = recv_frame($s);
    stream_set_timeout($s, 5);
    return $b === null;
}

[$_, $mode, $addr] = $argv;
if ($mode === 'publish') {
    $s = conn($addr);
    fwrite($s, frame(serialize(['type' => 'publish', 'channels' => [$argv[3]], 'data' => json_decode($argv[4], true)])));
    fclose($s);
    exit(0);
}
if ($mode === 'listen') {
    $s = conn($addr);
    stream_set_timeout($s, 30);
    subscribe_ready($s, [$argv[3]]);
    echo "ready\n";
    for ($i = 0; $i < (int)$argv[4]; $i++) {
        $m = recv($s);
        check($m !== null, "event $i");
        echo json_encode($m), "\n";
    }
    exit(0);
}
// semantics
$a = conn($addr); $b = conn($addr); $c = conn($addr);
fwrite($a, frame('')); // a ping: no answer, connection kept
subscribe_ready($a, ['news']);
subscribe_ready($b, ['news']);
$values = [null, true, false, 0, -1, PHP_INT_MAX, PHP_INT_MIN, 1.5, -0.0, 1e300, INF, '', "bytes\0\xff", 'é',
    [], [1, 2, 3], ['k' => 'v', 7 => [true, ['deep' => null]]], [3 => 'x', 'a' => 1.25]];
foreach ($values as $v) {
    send($c, ['type' => 'publish', 'channels' => ['news'], 'data' => $v]);
    foreach ([$a, $b] as $s) {
        $m = recv($s);
        check($m === ['type' => 'event', 'channel' => 'news', 'data' => $v], 'round trip of ' . var_export($v, true));
    }
}
$m = null;
send($c, ['type' => 'publish', 'channels' => ['news'], 'data' => NAN]);
check(is_nan(recv($a)['data']) && is_nan(recv($b)['data']), 'NAN');
// unsubscribe
send($b, ['type' => 'unsubscribe', 'channels' => ['news']]);
subscribe_ready($b, []);
send($c, ['type' => 'publish', 'channels' => ['news'], 'data' => 'after']);
check(recv($a)['data'] === 'after', 'a still subscribed');
check(silent($b), 'b unsubscribed');
// publishLoop: one subscriber each time, in turn
subscribe_ready($b, ['work']);
subscribe_ready($a, ['work']);
for ($i = 0; $i < 4; $i++) send($c, ['type' => 'publishLoop', 'channels' => ['work'], 'data' => $i]);
$got_a = [recv($a)['data'], recv($a)['data']];
$got_b = [recv($b)['data'], recv($b)['data']];
sort($got_a); sort($got_b);
check(($got_a === [0, 2] && $got_b === [1, 3]) || ($got_a === [1, 3] && $got_b === [0, 2]), 'round robin');
check(silent($a) && silent($b), 'one each');
// queues: enqueue before anyone watches; reserve takes one item per reserve
send($c, ['type' => 'enqueue', 'channels' => ['jobs'], 'data' => 'j1']);
send($c, ['type' => 'enqueue', 'channels' => ['jobs'], 'data' => 'j2']);
send($a, ['type' => 'watch', 'channels' => ['jobs']]);
send($b, ['type' => 'watch', 'channels' => ['jobs']]);
send($a, ['type' => 'reserve']);
check(recv($a) === ['type' => 'queue', 'channel' => 'jobs', 'data' => 'j1'], 'first reserve');
check(silent($a), 'one item per reserve');
send($b, ['type' => 'reserve']);
check(recv($b) === ['type' => 'queue', 'channel' => 'jobs', 'data' => 'j2'], 'second reserve');
send($b, ['type' => 'reserve']); // waits for the next item
send($c, ['type' => 'enqueue', 'channels' => ['jobs'], 'data' => ['n' => 3]]);
check(recv($b) === ['type' => 'queue', 'channel' => 'jobs', 'data' => ['n' => 3]], 'pending reserve served');
send($b, ['type' => 'unwatch', 'channels' => ['jobs']]);
send($b, ['type' => 'reserve']);
send($c, ['type' => 'enqueue', 'channels' => ['jobs'], 'data' => 'j4']);
check(silent($b), 'unwatched');
send($a, ['type' => 'reserve']);
check(recv($a)['data'] === 'j4', 'a takes it');
// malformed frames: each closes that connection only
$bad = [
    pack('N', 3) . 'x',                             // length below the header
    pack('N', 0x7fffffff) . 'a',                    // huge length
    frame('a:2:{s:4:"type";s:7:"publish"'),        // truncated serialize
    frame('s:999999999:"x";'),                      // huge declared string
    frame(str_repeat('a:1:{i:0;', 100) . 'N;' . str_repeat('}', 100)), // deep nesting
    frame(serialize(['type' => 'publish', 'channels' => ['news'], 'data' => new stdClass()])), // object
    frame(serialize('not a command')),
];
foreach ($bad as $i => $bytes) {
    $x = conn($addr);
    fwrite($x, frame('') . $bytes); // a ping first: a PHP client, whatever follows
    $closed = fread_all($x, 1) === null && feof($x);
    check($closed, "malformed frame $i closes its connection");
    fclose($x);
}
send($c, ['type' => 'publish', 'channels' => ['news'], 'data' => 'still here']);
check(recv($a)['data'] === 'still here', 'others unharmed');
echo "ok\n";
