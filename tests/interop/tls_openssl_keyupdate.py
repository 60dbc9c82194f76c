"""OpenSSL's own client (`openssl s_client`) against our TLS 1.3 record layer: twice, a
key update that asks for ours too (s_client's `K` command), then an HTTPS request whose
answer must arrive. Each step waits for s_client's output of the one before (a command is
recognised only when it arrives alone), so nothing is timed.
usage: tls_openssl_keyupdate.py TLS_PORT CA_PEM"""
import subprocess
import sys
import threading

tls_port, ca = sys.argv[1:]
client = subprocess.Popen(
    ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port}", "-servername", "localhost",
     "-CAfile", ca, "-tls1_3", "-crlf"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
)
# The whole exchange is bounded: a stuck server fails the test instead of hanging it.
timer = threading.Timer(20, client.kill)
timer.start()
seen = []


def wait_for(text):
    for line in client.stdout:
        seen.append(line.rstrip("\n"))
        if text in line:
            return
    raise SystemExit(f"tls_openssl_keyupdate: no {text!r} from s_client:\n" + "\n".join(seen))


def send(text):
    client.stdin.write(text)
    client.stdin.flush()


wait_for("Verify return code: 0 (ok)")
for last in (False, True):
    send("K\n")
    wait_for("KEYUPDATE")
    close = "Connection: close\n" if last else ""
    send(f"GET /healthz HTTP/1.1\nHost: localhost\n{close}\n")
    wait_for("HTTP/1.1 200 OK")
client.stdin.close()
rest = client.stdout.read()
client.wait()
timer.cancel()
assert "closed" in rest or client.returncode == 0, rest
print("openssl s_client key updates over wss: ok")
