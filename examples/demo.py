"""`make demo`: a throwaway ecd on the embedded SQLite default, the bundled example processor
loaded from a git repository, a few calls from ecctl and from Python, a shell pipe, a client on
tcp that pins the node's key and logs in (CURVE), then a clean stop. Everything lives in a temp
dir that is removed at the end (the client's config folder too: EC_CONFIG_DIR).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent


def sh(cmd: list[str] | str, env: dict[str, str], expect: int = 0, **kw: object) -> str:
    shown = cmd if isinstance(cmd, str) else " ".join(cmd)
    print(f"$ {shown}", flush=True)
    result = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=600,
                            shell=isinstance(cmd, str), executable="/bin/bash" if isinstance(cmd, str) else None, **kw)
    out = result.stdout.rstrip("\n")
    if out:
        print(out)
    if expect and result.stderr:
        print(result.stderr.rstrip("\n"))
    if result.returncode != expect:
        print(result.stderr, file=sys.stderr)
        raise SystemExit(f"demo step failed: {shown}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="ec-demo-"))
    data_dir = base / "data"
    repo = base / "sample"
    shutil.copytree(HERE / "sample", repo, ignore=shutil.ignore_patterns("__pycache__"))
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
               "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "sample processor"]):
        subprocess.run(["git", *args], cwd=repo, env=git_env, check=True, timeout=60)
    env = {**os.environ, "EC_ENDPOINT": f"ipc://{data_dir}/ecd.sock", "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "EC_CONFIG_DIR": str(base / "client-config")}
    tcp = f"tcp://127.0.0.1:{free_port()}"
    log = open(base / "ecd.log", "wb")
    print(f"$ ecd run --data-dir {data_dir} --listen {tcp}   (log: {base / 'ecd.log'})", flush=True)
    ecd = subprocess.Popen([str(BIN / "ecd"), "run", "--data-dir", str(data_dir), "--listen", tcp], stdout=log,
                           stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(BIN / "ecctl"), "status"], env=env, capture_output=True).returncode != 0:
            if ecd.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("ecd did not start; see " + str(base / "ecd.log"))
            time.sleep(0.1)
        sh(["ecctl", "add", "queue", "-n", "q1", "-t", "direct"], env)
        sh(["ecctl", "add", "processor", "-n", "proc1", "-g", f"file://{repo}", "-m", "sample.tasks", "-c", "2"], env)
        for fn in ("do_something", "do_this", "add_two", "count"):
            sh(["ecctl", "add", "socket", "-n", f"sample.tasks.{fn}", "-q", "q1", "-pn", "proc1", "-t", fn], env)
        sh(["ecctl", "run", "sample.tasks.do_something", "hello"], env)
        sh('echo "HI THERE!" | ecctl run sample.tasks.do_something | ecctl run sample.tasks.do_this', env)
        sh(["ecctl", "task", "run", "--socket", "sample.tasks.do_this", "--data", '["some data"]'], env)
        sh(["ecctl", "run", "sample.tasks.add_two", "--data", "[40, 2]"], env)
        print("$ python: Function('sample.tasks.do_something')('from python').get()", flush=True)
        code = ("from ecctl import Function\n"
                "r = Function('sample.tasks.do_something')('from python')\n"
                "print(r.id, '->', r.get(timeout=60))\n")
        print(subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True, check=True,
                             timeout=120).stdout.rstrip())
        # data flows: a plug, the seed's workflow, a stream
        sh(["ecctl", "add", "plug", "-n", "p1", "--source", "sample.tasks.do_something",
            "--target", "sample.tasks.do_this", "-q", "q1"], env)
        call_id = sh(["ecctl", "run", "--no-wait", "sample.tasks.do_something", "plugged"], env)
        print("$ python: wait for the plug's call", flush=True)
        wait = ("import sys, time\nfrom ecctl import Client\nc = Client()\nc.result(sys.argv[1], timeout=60)\n"
                "deadline = time.monotonic() + 60\n"
                "while not c.ls_call(sys.argv[1])['children'] and time.monotonic() < deadline: time.sleep(0.05)\n"
                "print(c.result(c.ls_call(sys.argv[1])['children'][0], timeout=60))\n")
        print(subprocess.run([sys.executable, "-c", wait, call_id], env=env, text=True, capture_output=True,
                             check=True, timeout=120).stdout.rstrip())
        sh(["ecctl", "ls", "call", "--id", call_id, "--tree", "--result"], env)
        sh(["ecctl", "delete", "plug", "-n", "p1"], env)
        print("$ python: the seed's funnel workflow", flush=True)
        workflow = ("from ecctl import Function, parallel, pipeline, funnel\n"
                    "do_something = Function('sample.tasks.do_something').p\n"
                    "_pipeline = pipeline([do_something('One'), do_something('Two'),\n"
                    "                      parallel([do_something('Four'), do_something('Five')]), do_something('Three')])\n"
                    "_parallel = parallel([_pipeline, do_something('Six'), do_something('Seven')])\n"
                    "_funnel = funnel([do_something('Eight'), _parallel, do_something('Nine')])\n"
                    "result = _funnel(do_something('Four'))\n"
                    "print('FUNNEL: ', result.get(60))\n"
                    "print(result.id)\n")
        out = subprocess.run([sys.executable, "-c", workflow], env=env, text=True, capture_output=True, check=True,
                             timeout=120).stdout.rstrip().splitlines()
        print(out[0])
        sh(["ecctl", "ls", "call", "--id", out[1], "--graph"], env)
        sh(["ecctl", "run", "--stream", "sample.tasks.count", "--data", "[3, 0.2]"], env)
        sh(["ecctl", "ls", "calls", "-r", "5"], env)
        sh(["ecctl", "status"], env)
        # the same node over tcp, as a client on another machine meets it: CURVE, a pinned key, a login
        print("# over tcp: the node's key is pinned, then the client logs in (the ipc socket above is "
              "the local administrator)", flush=True)
        key = sh(["ecd", "keys", "show", "--data-dir", str(data_dir)], env)
        sh(["ecctl", "trust", tcp, key], env)
        remote = {**env, "EC_ENDPOINT": tcp}
        sh(["ecctl", "run", "sample.tasks.do_this", "before login"], remote, expect=1)
        sh(f"ecctl login -u admin --password-stdin < {data_dir / 'admin.password'}", remote)
        sh(["ecctl", "whoami"], remote)
        sh(["ecctl", "run", "sample.tasks.do_something", "over CURVE"], remote)
        sh(["ecctl", "ls", "audit", "-r", "4"], remote)
    finally:
        print("$ kill -TERM ecd", flush=True)
        if ecd.poll() is None:
            ecd.send_signal(signal.SIGTERM)
        try:
            code = ecd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ecd.kill()
            code = ecd.wait()
        log.close()
        print(f"ecd exited with {code}")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
