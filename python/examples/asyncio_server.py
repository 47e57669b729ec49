"""asyncio_server: an asyncio TCP line server embedding lbagent.

Every line a client sends is echoed back; "STATS" answers the number of lines echoed, and
"BLOCK MS" blocks the event loop for MS milliseconds (a stuck loop, simulated: the heartbeat
task stops too, and the watchdog reports the server DOWN until the loop runs again).

- The agent starts first (directors see STARTING), and goes UP once the port is open.
- A periodic task on the event loop heart-beats: it only runs when the loop does.
- The load is the number of connected clients out of a capacity.
- SIGTERM, through loop.add_signal_handler, drains at once; the server keeps serving (new
  connections too: a director sends some until it has heard of the drain) while
  Agent.wait_drained, on a worker thread, waits until every director that asks has been
  told and no client is left (at most DRAIN_LIMIT_MS); then it closes what is left, reports
  STOPPING, and the Agent is closed by its `with`.

Usage: python asyncio_server.py [TCP_PORT]   (default 7073; 0 lets the system choose)
The agent is configured by LBAGENT_CONFIG, e.g. "listen=127.0.0.1:4950 watchdog_ms=1500".
"""

import asyncio
import signal
import sys
import time

import lbagent

HEARTBEAT_SECONDS = 0.2  # well within watchdog_ms
CAPACITY = 100
DRAIN_LIMIT_MS = 15000


class EchoServer:
    def __init__(self, agent: lbagent.Agent):
        self.agent = agent
        self.clients = {}  # the task serving each connection: its writer
        self.lines = 0

    def report_load(self):
        self.agent.set_load(len(self.clients), CAPACITY)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.clients[asyncio.current_task()] = writer
        self.report_load()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if text.startswith("BLOCK "):
                    time.sleep(int(text.split()[1]) / 1000)  # blocks the whole loop
                    reply = "unblocked"
                elif text == "STATS":
                    reply = str(self.lines)
                else:
                    reply = text
                    self.lines += 1
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            del self.clients[asyncio.current_task()]
            self.report_load()
            writer.close()

    async def heartbeat(self):
        while True:
            self.agent.heartbeat()
            await asyncio.sleep(HEARTBEAT_SECONDS)


async def serve(port: int) -> None:
    with lbagent.Agent() as agent:  # LBAGENT_CONFIG
        agent.set_state(lbagent.State.STARTING, "opening port")
        app = EchoServer(agent)
        server = await asyncio.start_server(app.handle, "127.0.0.1", port)
        heartbeat = asyncio.ensure_future(app.heartbeat())

        stop = asyncio.Event()

        def on_sigterm():
            agent.set_state(lbagent.State.DRAIN, "shutting down")
            stop.set()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        loop.add_signal_handler(signal.SIGINT, on_sigterm)
        agent.set_state(lbagent.State.UP, "ready")
        bound = server.sockets[0].getsockname()[1]
        print(f"asyncio_server: agent on UDP port {agent.port}, serving TCP 127.0.0.1:{bound}"
              f" (lbagent {lbagent.version()})", flush=True)

        await stop.wait()
        # The loop keeps serving while a worker thread waits for the drain to complete.
        try:
            await loop.run_in_executor(None, agent.wait_drained, DRAIN_LIMIT_MS)
        except lbagent.TimedOutError as e:
            print(f"asyncio_server: {e}; stopping anyway", flush=True)
        server.close()
        for writer in app.clients.values():
            writer.close()  # the client's handler reads the end and finishes
        await asyncio.gather(*app.clients, return_exceptions=True)
        heartbeat.cancel()
        agent.set_state(lbagent.State.STOPPING, "exiting")
    print(f"asyncio_server: stopped after {app.lines} lines", flush=True)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 7073))
