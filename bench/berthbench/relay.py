"""A throttling, counting TCP relay: `python3 -m berthbench.relay`.

It sits between a mirror and the upstream for the throttled variant of the
concurrent cold pull, so that the upstream looks like a real registry behind
a WAN link (all connections together get `--rate` bytes/s toward the
mirror). It runs as its own process so that its work never competes with the
harness's Python for the GIL. It counts bytes both ways and, on SIGTERM,
writes them as JSON to `--stats` and exits; on SIGUSR1 it writes them to
`<stats>.snapshot` (renamed into place whole) and goes on.

Shaping: every chunk read from the upstream reserves the next slot of a
single shared schedule (`next_free`), so the total never exceeds the rate,
whatever the number of connections, and chunks are served in arrival order.
The schedule is a token bucket with `BURST` bytes of depth: when the relay
wakes late (timer slack, or its share of two busy cores), it makes up the
time within the burst, as a real link keeps delivering into its buffers
while the receiver's CPU is busy. Without that, every late wake-up was link
time lost for good: on 2 busy cores the link delivered 44.6 MiB/s of its
50, and the throttled rows measured the relay, not the mirror. The stats
say what the link achieved (`first_byte`, `last_byte`).
"""
import argparse
import asyncio
import json
import os
import signal
import time

READ = 64 << 10
# What the link may deliver at once after the relay was late or idle: 20 ms
# at the full profile's 50 MiB/s, and less than the kernel's socket buffers
# between the relay and a mirror hold.
BURST = 1 << 20


class Shaper:
    """A shared schedule: `await take(n)` returns when n more bytes may go."""

    def __init__(self, rate):
        self.rate = rate
        self.next_free = time.monotonic()

    async def take(self, n):
        if not self.rate:
            return
        now = time.monotonic()
        # A slot no earlier than one burst ago: lateness within the burst is
        # made up, idle time beyond it is not banked.
        start = max(self.next_free, now - BURST / self.rate)
        self.next_free = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class Relay:
    def __init__(self, target_port, rate):
        self.target_port = target_port
        self.shaper = Shaper(rate)
        self.stats = {"connections": 0, "bytes_to_upstream": 0, "bytes_from_upstream": 0}

    async def handle(self, client_r, client_w):
        self.stats["connections"] += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self.pump(client_r, up_w, "bytes_to_upstream", shaped=False),
            self.pump(up_r, client_w, "bytes_from_upstream", shaped=True))

    async def pump(self, reader, writer, counter, shaped):
        try:
            while True:
                data = await reader.read(READ)
                if not data:
                    break
                if shaped:
                    await self.shaper.take(len(data))
                    self.stats["last_byte"] = time.monotonic()
                    self.stats.setdefault("first_byte", self.stats["last_byte"])
                self.stats[counter] += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except (ConnectionError, OSError):
                pass


async def serve(args):
    relay = Relay(args.target_port, args.rate)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, write_stats, relay.stats, args.stats + ".snapshot")
    async with server:
        await stop.wait()
    write_stats(relay.stats, args.stats)


def write_stats(stats, path):
    with open(path + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0, help="bytes/s toward the client; 0: no limit")
    parser.add_argument("--stats", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
