"""Security boundaries around the coordinator and every server: the coordinator is not a confused
deputy (it calls only targets its policy allows, with the credential the policy gives each, and
reads inputs only under its input roots, with no existence oracle); unauthenticated requests are
refused before their message is read, logged and counted; one token parser; a warning when a
server is reachable from other machines without auth.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from parrot.v1 import coordinator_pb2 as cpb, responder_pb2, responder_pb2_grpc
from tests.conftest import PARROT, REPO, free_port, start_service, terminate
from tests.process.test_coordinator import coord_stub, eval_spec, jsonl, many_questions, start_coordinator
from tests.process.test_faults import metric, wait_for

pytestmark = pytest.mark.timeout(300)

CALLER = "caller-token-1b6f0c2e9d"  # what callers of the coordinator hold
UPSTREAM = "upstream-token-77d1a0e4c3"  # what only the coordinator holds, for its model services
SPY_OWN = "spy-own-token-5e02b9aa41"  # a per-target token from a file


class Spy(responder_pb2_grpc.ResponderServicer):
    """A responder on loopback that records the authorization header of every call it gets."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def Respond(self, request, context):
        self.seen.append(dict(context.invocation_metadata()).get("authorization"))
        return responder_pb2.RespondResponse(text="spy answer", model="spy")


@pytest.fixture
def spy():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recorder = Spy()
    responder_pb2_grpc.add_ResponderServicer_to_server(recorder, server)
    h = health.HealthServicer()
    h.set("parrot.v1.Responder", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    recorder.target = f"127.0.0.1:{port}"
    yield recorder
    server.stop(0)


@pytest.fixture(scope="module")
def guarded_models(tmp_path_factory):
    """Echo model services that require the upstream token."""
    sp = start_service(tmp_path_factory.mktemp("models"), ["all", "--backend", "echo"], wait_for="parrot.v1.Judge",
                       token=UPSTREAM)
    yield sp
    assert sp.stop() == 0


def coordinator(tmp: Path, models: str, allowed: str = "", roots: str = "", extra_env: dict | None = None):
    upstream_file = tmp / "upstream.token"
    upstream_file.write_text(UPSTREAM + "\n")  # a Secret's trailing newline is fine
    env = {"PARROT_AUTH_TOKEN": CALLER, "PARROT_UPSTREAM_TOKEN_FILE": str(upstream_file),
           "PARROT_ALLOWED_TARGETS": allowed, "PARROT_INPUT_ROOTS": roots, **(extra_env or {})}
    return start_coordinator(tmp, (tmp / "store").as_uri(), models, env=env)


def start(stub, spec: cpb.RunSpec) -> cpb.Run:
    return stub.StartRun(cpb.StartRunRequest(spec=spec), metadata=[("authorization", f"Bearer {CALLER}")], timeout=30)


def get(stub, run_id: str) -> cpb.Run:
    return stub.GetRun(cpb.GetRunRequest(run_id=run_id), metadata=[("authorization", f"Bearer {CALLER}")], timeout=10)


def done(stub, run_id: str, timeout: float = 120) -> cpb.Run:
    deadline = time.monotonic() + timeout
    while (r := get(stub, run_id)).state not in (cpb.RUN_STATE_SUCCEEDED, cpb.RUN_STATE_FAILED, cpb.RUN_STATE_CANCELLED):
        assert time.monotonic() < deadline, f"run {run_id} not done"
        time.sleep(0.2)
    return r


# ------------------------------------------------------------------- 1. targets by policy


def test_a_caller_cannot_make_the_coordinator_send_its_token_elsewhere(tmp_path, spy, guarded_models):
    c = coordinator(tmp_path, guarded_models.grpc_target)
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            for mutate, field in ((lambda s: s.targets.CopyFrom(cpb.Targets(responder=spy.target)), "spec.targets.responder"),
                                  (lambda s: setattr(s.evaluation, "second_judge", spy.target), "spec.evaluation.second_judge"),
                                  (lambda s: (s.targets.CopyFrom(cpb.Targets(baseline_responder=spy.target)),
                                              setattr(s.evaluation, "pairwise", True)), "spec.targets.baseline_responder")):
                spec = eval_spec(many_questions(2))
                mutate(spec)
                with pytest.raises(grpc.RpcError) as e:
                    start(stub, spec)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
                assert field in e.value.details() and "--allowed-targets" in e.value.details()
            # its own targets still work, with the upstream token (the models refuse anything else)
            ok = done(stub, start(stub, eval_spec(many_questions(2))).id)
            assert ok.state == cpb.RUN_STATE_SUCCEEDED and ok.progress.failed == 0, ok.message
        assert spy.seen == []  # never called, so never handed a token
        assert not any(UPSTREAM in line or CALLER in line for line in c.log().splitlines())
    finally:
        assert c.stop() == 0


@pytest.mark.parametrize("credential,expected", [("", None), ("=FILE", f"Bearer {SPY_OWN}")])
def test_an_allowed_target_gets_only_the_credential_its_entry_names(tmp_path, spy, guarded_models, credential, expected):
    own = tmp_path / "spy.token"
    own.write_text(SPY_OWN)
    entry = f"127.0.0.1:{spy.target.rsplit(':', 1)[1]}" + credential.replace("FILE", str(own))
    c = coordinator(tmp_path, guarded_models.grpc_target, allowed=entry)
    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            spec = eval_spec(many_questions(3), targets=cpb.Targets(responder=spy.target))
            run = done(stub, start(stub, spec).id)
            assert run.state == cpb.RUN_STATE_SUCCEEDED and run.progress.failed == 0, run.message
        assert len(spy.seen) == 6 and set(spy.seen) == {expected}  # 3 sessions x 2 turns; never the upstream token
    finally:
        assert c.stop() == 0


def test_a_bad_allowlist_or_token_file_stops_the_coordinator_at_start(tmp_path):
    for allowed, needle in (("has space:1", "does not start with a PATTERN"),
                            ("h:1=/nonexistent/token", "cannot read /nonexistent/token")):
        env = dict(os.environ, PARROT_ALLOWED_TARGETS=allowed)
        env.pop("PARROT_AUTH_TOKEN", None)
        out = subprocess.run([PARROT, "serve", "coordinator", "--store", (tmp_path / "s").as_uri(), "--host", "127.0.0.1",
                              "--grpc-port", str(free_port()), "--http-port", str(free_port())],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 2 and needle in out.stderr and "--allowed-targets" in out.stderr, out.stderr


# ------------------------------------------------------------------- 2. inputs by policy


def test_input_urls_are_confined_without_an_existence_oracle(tmp_path, guarded_models):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "q.jsonl").write_bytes(jsonl(many_questions(2)))
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(jsonl([{"question_id": 1, "category": "x", "turns": ["PLANTED-SECRET-7731"]}]))
    (inputs / "link.jsonl").symlink_to(secret)
    c = coordinator(tmp_path, guarded_models.grpc_target, roots=str(inputs))

    def spec(url: str) -> cpb.RunSpec:
        s = eval_spec()
        s.evaluation.questions.CopyFrom(cpb.InputFile(url=url))
        return s

    try:
        with grpc.insecure_channel(c.grpc_target) as ch:
            stub = coord_stub(ch)
            answers = {}
            for url in (secret.as_uri(), (tmp_path / "missing.jsonl").as_uri(), "file:///etc/shadow", "/etc/passwd",
                        f"file://{inputs}/../secret.jsonl", (inputs / "link.jsonl").as_uri(), "s3://other-team/private.jsonl"):
                with pytest.raises(grpc.RpcError) as e:
                    start(stub, spec(url))
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (url, e.value.details())
                answers[url] = e.value.details().split(" is outside ", 1)[1]
            assert len(set(answers.values())) == 1  # the same answer whether the file exists or not
            assert "--input-roots" in next(iter(answers.values()))
            run = done(stub, start(stub, spec((inputs / "q.jsonl").as_uri())).id)  # under a root: fine
            assert run.state == cpb.RUN_STATE_SUCCEEDED, run.message
        assert "PLANTED-SECRET-7731" not in "".join(p.read_text(errors="replace") for p in (tmp_path / "store").rglob("*")
                                                    if p.is_file())
    finally:
        assert c.stop() == 0


# ------------------------------------------------------------------- 5, 6. refused unread; logged and counted


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unauthenticated_requests_are_refused_unread_logged_and_counted(tmp_path, guarded_models):
    c = coordinator(tmp_path, guarded_models.grpc_target)
    big = cpb.StartRunRequest(spec=cpb.RunSpec(evaluation=cpb.EvaluationSpec(
        questions=cpb.InputFile(name="q.jsonl", content=b"x" * (60 << 20)))))
    try:
        opts = [("grpc.max_send_message_length", 100 << 20)]
        with grpc.insecure_channel(c.grpc_target, options=opts) as ch:
            stub = coord_stub(ch)
            with pytest.raises(grpc.RpcError):
                stub.ListRuns(cpb.ListRunsRequest(), timeout=10)  # warm up the process
            before = _rss_kib(c.proc.pid)
            for md in ([], [("authorization", "Bearer wrong-token-0000000000")], [("authorization", "Basic x")]):
                with pytest.raises(grpc.RpcError) as e:
                    stub.StartRun(big, metadata=md, timeout=60)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            grown_mib = (_rss_kib(c.proc.pid) - before) / 1024
        assert grown_mib < 40, f"RSS grew {grown_mib:.0f} MiB for three refused 60 MiB requests"
        refusals = [json.loads(line) for line in c.log().splitlines()
                    if line.startswith("{") and "authentication failed" in line]
        assert {r["reason"] for r in refusals} == {"missing", "invalid"} and len(refusals) == 4
        assert all(r["transport"] == "grpc" and r["method"].startswith("/parrot.v1.Coordinator/") for r in refusals)
        assert "wrong-token-0000000000" not in c.log()
        assert metric(c.http_url, "parrot_auth_failures_total", {"transport": "grpc"}) == 4
    finally:
        assert c.stop() == 0


# ------------------------------------------------------------------- 7. one token parser


def test_tokens_from_files_and_environment_are_parsed_alike(tmp_path, guarded_models):
    c = coordinator(tmp_path, guarded_models.grpc_target)
    try:
        env = dict(os.environ, PARROT_COORDINATOR=c.grpc_target, PARROT_AUTH_TOKEN=CALLER + "\n")  # as from a Secret
        out = subprocess.run([PARROT, "runs", "list"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        env["PARROT_AUTH_TOKEN"] = "two words-000000000000"
        out = subprocess.run([PARROT, "runs", "list"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 2 and "PARROT_AUTH_TOKEN: the token contains whitespace" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "two words" not in out.stderr
    finally:
        assert c.stop() == 0
    short = tmp_path / "short.token"
    short.write_text("x\n")
    for env_extra in ({"PARROT_AUTH_TOKEN": "x"}, {"PARROT_AUTH_TOKEN_FILE": str(short)}, {"PARROT_UPSTREAM_TOKEN": "y"}):
        env = {k: v for k, v in os.environ.items() if k != "PARROT_AUTH_TOKEN"}
        env.update(env_extra)
        out = subprocess.run([PARROT, "serve", "coordinator", "--store", (tmp_path / "s").as_uri(), "--host", "127.0.0.1",
                              "--grpc-port", str(free_port()), "--http-port", str(free_port())],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 2 and "at least 16 are required" in out.stderr, (env_extra, out.stderr)


# ------------------------------------------------------------------- 8. exposure said at start-up


def test_serving_all_interfaces_without_auth_warns_and_the_log_says_whether_auth_is_on(tmp_path):
    grpc_port, http_port = free_port(), free_port()
    log_path = tmp_path / "exposed.log"
    env = {k: v for k, v in os.environ.items() if k != "PARROT_AUTH_TOKEN"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PARROT, "serve", "all", "--backend", "echo", "--host", "0.0.0.0",
                                 "--grpc-port", str(grpc_port), "--http-port", str(http_port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        ready = wait_for(lambda: [json.loads(x) for x in log_path.read_text().splitlines()
                                  if x.startswith("{") and '"ready"' in x], 120, "the service to be ready")
        assert ready[0]["auth"] == "off"
        text = log_path.read_text()
        assert "WITHOUT authentication" in text and "--auth-token-file" in text
    finally:
        terminate(proc, 60, "service", log_path.read_text)
    quiet = start_service(tmp_path, ["all", "--backend", "echo"], wait_for="parrot.v1.Judge", token=UPSTREAM)
    try:
        ready = [json.loads(x) for x in quiet.log().splitlines() if x.startswith("{") and '"ready"' in x]
        assert ready and ready[0]["auth"] == "on" and "WITHOUT authentication" not in quiet.log()
    finally:
        assert quiet.stop() == 0


# ------------------------------------------------------------------- 3. TLS on every port


def test_tls_on_every_port_with_client_certificates_and_per_target_tls(tmp_path, monkeypatch):
    import httpx

    from tests.process.test_security import self_signed

    server_cert, server_key = self_signed(tmp_path, "server")
    client_cert, client_key = self_signed(tmp_path, "client")
    # This process's health polls: trust the server, present the client certificate.
    monkeypatch.setenv("PARROT_TLS_CA", str(server_cert))
    monkeypatch.setenv("PARROT_TLS_CLIENT_CERT", str(client_cert))
    monkeypatch.setenv("PARROT_TLS_CLIENT_KEY", str(client_key))
    tls = {"PARROT_TLS_CERT": str(server_cert), "PARROT_TLS_KEY": str(server_key), "PARROT_TLS_CLIENT_CA": str(client_cert)}
    models = start_service(tmp_path, ["all", "--backend", "echo"], wait_for="parrot.v1.Judge", env_extra=tls, token=UPSTREAM)
    # The coordinator dials the model services by --target-tls alone (no process-wide PARROT_TLS_CA).
    coord = start_coordinator(tmp_path, (tmp_path / "store").as_uri(), models.grpc_target, env={
        **tls, "PARROT_AUTH_TOKEN": CALLER, "PARROT_UPSTREAM_TOKEN": UPSTREAM, "PARROT_TLS_CA": "", "PARROT_TLS_CLIENT_CERT": "",
        "PARROT_TARGET_TLS": f"127.0.0.1:*={server_cert}:{client_cert}:{client_key}"})
    https = models.http_url.replace("http://", "https://")
    body = {"inputs": [{"name": "request", "shape": [1], "datatype": "BYTES",
                        "data": [json.dumps({"conversation": {"messages": [{"role": "ROLE_USER", "content": "hi"}]}})]}]}
    try:
        import ssl

        mutual = ssl.create_default_context(cafile=str(server_cert))
        mutual.load_cert_chain(str(client_cert), str(client_key))
        with httpx.Client(verify=mutual, timeout=30) as client:
            assert client.get(f"{https}/v2/health/ready").status_code == 200
            r = client.post(f"{https}/v2/models/responder/infer", json=body, headers={"authorization": f"Bearer {UPSTREAM}"})
            assert r.status_code == 200, r.text
            metrics = client.get(coord.http_url.replace("http://", "https://") + "/metrics")
            assert metrics.status_code == 200 and "parrot_coordinator_runs_running" in metrics.text
        for url in (f"{models.http_url}/v2/health/ready", f"{coord.http_url}/metrics"):  # plain text: no answer
            with pytest.raises(httpx.HTTPError):
                httpx.get(url, timeout=10)
        with pytest.raises(httpx.HTTPError):  # TLS without a client certificate: refused
            httpx.get(f"{https}/v2/health/ready", verify=ssl.create_default_context(cafile=str(server_cert)),
                      timeout=10).raise_for_status()
        no_client_cert = grpc.ssl_channel_credentials(root_certificates=server_cert.read_bytes())
        with grpc.secure_channel(models.grpc_target, no_client_cert) as ch, pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # A run through the TLS coordinator, over TLS to the model services.
        creds = grpc.ssl_channel_credentials(server_cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes())
        with grpc.secure_channel(coord.grpc_target, creds) as ch:
            run = done(coord_stub(ch), start(coord_stub(ch), eval_spec(many_questions(2))).id)
            assert run.state == cpb.RUN_STATE_SUCCEEDED and run.progress.failed == 0, run.message
        # A plain-text client meeting a TLS server is told what to set.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_TLS")}
        out = subprocess.run([PARROT, "runs", "list", "-c", coord.grpc_target], capture_output=True, text=True,
                             env={**env, "PARROT_AUTH_TOKEN": CALLER}, timeout=60)
        assert out.returncode == 2 and "set PARROT_TLS_CA" in out.stderr, out.stderr
    finally:
        codes = (coord.stop(), models.stop())
        assert codes == (0, 0)


# ------------------------------------------------------------------- 4, 6. admin routes; HTTP refusals


def test_repository_extension_is_off_and_http_refusals_are_logged_and_counted(tmp_path, guarded_models):
    import httpx

    url = guarded_models.http_url
    body = {"instances": [{"conversation": {"messages": [{"role": "ROLE_USER", "content": "hi"}]}}]}
    ok = {"authorization": f"Bearer {UPSTREAM}"}
    with httpx.Client(timeout=30) as client:
        for action in ("unload", "load"):
            r = client.post(f"{url}/v2/repository/models/responder/{action}", headers=ok)
            assert r.status_code == 404, (action, r.status_code, r.text)
        assert client.post(f"{url}/v1/models/responder:predict", json=body, headers=ok).status_code == 200
        assert client.get(f"{url}/v2/models/responder/ready").status_code == 200
        before = metric(url, "parrot_auth_failures_total", {"transport": "http"})
        for headers in ({}, {"authorization": "Bearer not-the-token-000000"}):
            r = client.post(f"{url}/v1/models/responder:predict", json=body, headers=headers)
            assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
    assert metric(url, "parrot_auth_failures_total", {"transport": "http"}) == before + 2
    refusals = [json.loads(x) for x in guarded_models.log().splitlines()
                if x.startswith("{") and "authentication failed" in x and '"http"' in x]
    assert [r["reason"] for r in refusals[-2:]] == ["missing", "invalid"]
    assert all(r["method"] == "/v1/models/responder:predict" for r in refusals[-2:])
    assert "not-the-token-000000" not in guarded_models.log()
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as oip, grpc_predict_v2_pb2_grpc as oip_grpc

    with grpc.insecure_channel(guarded_models.grpc_target) as ch:  # nor over the Open Inference Protocol's gRPC
        stub = oip_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="responder"),
                                       metadata=[("authorization", f"Bearer {UPSTREAM}")], timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, e.value.details()
        ready = stub.ModelReady(oip.ModelReadyRequest(name="responder"), metadata=[("authorization", f"Bearer {UPSTREAM}")],
                                timeout=10)
        assert ready.ready
