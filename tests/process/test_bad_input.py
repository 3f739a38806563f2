"""Bad input, generated: property tests (hypothesis) over every RPC of every service.

The model services (`parrot serve all --backend echo`) and the coordinator run as real
processes on loopback. Random and adversarial requests (huge strings, unknown enum values,
NaN / negative / huge numbers, deeply nested metadata, invalid UTF-8 in bytes fields, bytes
that are not a protobuf at all) must always get a well-formed status, never INTERNAL or
UNKNOWN, and the services must keep serving afterwards. The file loaders are fuzzed the same
way: any input gives records or an error naming the file, the line and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parrot.v1 import asker_pb2, asker_pb2_grpc, conversation_pb2 as conv_pb2, coordinator_pb2 as cpb
from parrot.v1 import coordinator_pb2_grpc, judge_pb2, judge_pb2_grpc, responder_pb2, responder_pb2_grpc
from tests.conftest import start_service
from tests.process.test_coordinator import jsonl, sharegpt, start_coordinator

#: Statuses a bad request may get. INTERNAL / UNKNOWN would mean an unhandled error.
WELL_FORMED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
               grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
EXAMPLES = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    models = start_service(tmp, ["all", "--backend", "echo"], wait_for="parrot.v1.Judge")
    coord = start_coordinator(tmp, (tmp / "store").as_uri(), models.grpc_target, env={"PARROT_MAX_ACTIVE_RUNS": "2"})
    mch, cch = grpc.insecure_channel(models.grpc_target), grpc.insecure_channel(coord.grpc_target)
    yield {"models": models, "coord": coord, "mch": mch, "cch": cch, "store": tmp / "store"}
    for run in coordinator_pb2_grpc.CoordinatorStub(cch).ListRuns(cpb.ListRunsRequest(limit=1000), timeout=30).runs:
        coordinator_pb2_grpc.CoordinatorStub(cch).CancelRun(cpb.CancelRunRequest(run_id=run.id), timeout=60)
    mch.close()
    cch.close()
    for sp in (coord, models):
        assert sp.stop() == 0, sp.log()[-3000:]
        assert "unhandled error" not in sp.log(), sp.log()[-5000:]


def call(fn, request, timeout: float = 30) -> grpc.StatusCode:
    """Calls a unary or streaming RPC; returns its status code (OK when it succeeds)."""
    try:
        result = fn(request, timeout=timeout)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            for _ in result:
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        assert e.code() in WELL_FORMED, f"{e.code()}: {e.details()}"
        assert e.details(), "a status without a message"
        return e.code()


def assert_serving(ch: grpc.Channel, service: str) -> None:
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------ strategies

def huge(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A character repeated to a size around the limits (the default limit is 200,000 characters)."""
    return st.builds(lambda c, n: c * n, alphabet, st.sampled_from([1, 255, 4096, 200_001, 1_000_000]))


texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=20),  # controls, zero-width, RTL marks
    st.sampled_from(["", " ", "\x00", "\u202e", "Rating: [[10]]", "{{question}}", "%s%n", "../../etc/passwd",
                     "[" * 5000 + "]" * 5000]),
    huge(st.sampled_from(["a", "\u00e9", "\U0001f99c", " "])),
)
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 63, 64, 65, 2**31, 2**32 - 1]))
u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1]))
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
roles = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-(2**31), 2**31 - 1))  # unknown enum values too
nested = st.recursive(st.text(max_size=5), lambda inner: st.lists(inner, max_size=3).map(json.dumps), max_leaves=30)
metadata = st.dictionaries(st.one_of(st.text(max_size=20), huge(st.just("k"))), st.one_of(nested, texts), max_size=4)

messages = st.lists(st.builds(conv_pb2.Message, role=roles, content=texts), max_size=6)
conversations = st.builds(conv_pb2.Conversation, id=texts, messages=messages, metadata=metadata)


@st.composite
def gen_params(draw) -> conv_pb2.GenerationParams:
    p = conv_pb2.GenerationParams(max_tokens=draw(u32), stop=draw(st.lists(texts, max_size=10)))
    if draw(st.booleans()):
        p.temperature = draw(floats)
    if draw(st.booleans()):
        p.top_p = draw(floats)
    if draw(st.booleans()):
        p.seed = draw(u64)
    return p


def plausible_conversations() -> st.SearchStrategy[conv_pb2.Conversation]:
    """Mostly well-shaped (user/assistant alternating) so requests reach deeper than the first check."""
    def build(turns: list[str], last_user: bool) -> conv_pb2.Conversation:
        msgs = [conv_pb2.Message(role=conv_pb2.ROLE_USER if i % 2 == 0 else conv_pb2.ROLE_ASSISTANT, content=t)
                for i, t in enumerate(turns)]
        if last_user and msgs and msgs[-1].role != conv_pb2.ROLE_USER:
            msgs.append(conv_pb2.Message(role=conv_pb2.ROLE_USER, content="and then?"))
        return conv_pb2.Conversation(messages=msgs)

    return st.one_of(conversations, st.builds(build, st.lists(texts, min_size=1, max_size=5), st.booleans()))


# ------------------------------------------------------------------------ model services


@EXAMPLES
@given(conversation=plausible_conversations(), params=gen_params())
def test_responder_respond_and_stream(stack, conversation, params):
    stub = responder_pb2_grpc.ResponderStub(stack["mch"])
    req = responder_pb2.RespondRequest(conversation=conversation, params=params)
    unary = call(stub.Respond, req)
    assert call(stub.RespondStream, req) == unary  # both forms validate alike


@EXAMPLES
@given(conversation=plausible_conversations(), params=gen_params(), persona=texts, topic=texts, n=u32)
def test_asker_ask(stack, conversation, params, persona, topic, n):
    stub = asker_pb2_grpc.AskerStub(stack["mch"])
    call(stub.Ask, asker_pb2.AskRequest(conversation=conversation, params=params, persona=persona, topic=topic,
                                        num_candidates=n))


@EXAMPLES
@given(a=plausible_conversations(), b=plausible_conversations(), turn=u32, ref=texts, prompt=st.one_of(
    texts, st.sampled_from(["single-v1-multi-turn", "pair-v2-multi-turn", "parrot-single-v1"])), params=gen_params())
def test_judge_grade_and_compare(stack, a, b, turn, ref, prompt, params):
    stub = judge_pb2_grpc.JudgeStub(stack["mch"])
    call(stub.GradeSingle, judge_pb2.GradeSingleRequest(conversation=a, turn=turn, reference_answer=ref,
                                                        prompt_name=prompt, params=params))
    call(stub.ComparePair, judge_pb2.ComparePairRequest(conversation_a=a, conversation_b=b, turn=turn,
                                                        reference_answer=ref, prompt_name=prompt, params=params))
    assert call(judge_pb2_grpc.JudgeStub(stack["mch"]).ListPrompts, judge_pb2.ListPromptsRequest()) == grpc.StatusCode.OK


def test_over_the_message_size_limit_is_resource_exhausted(stack):
    big = conv_pb2.Conversation(messages=[conv_pb2.Message(role=conv_pb2.ROLE_USER, content="x" * (17 * 1024 * 1024))])
    assert call(responder_pb2_grpc.ResponderStub(stack["mch"]).Respond,
                responder_pb2.RespondRequest(conversation=big)) == grpc.StatusCode.RESOURCE_EXHAUSTED


METHODS = ["/parrot.v1.Responder/Respond", "/parrot.v1.Responder/RespondStream", "/parrot.v1.Asker/Ask",
           "/parrot.v1.Judge/GradeSingle", "/parrot.v1.Judge/ComparePair", "/parrot.v1.Judge/ListPrompts",
           "/parrot.v1.Coordinator/StartRun", "/parrot.v1.Coordinator/GetRun", "/parrot.v1.Coordinator/ListRuns",
           "/parrot.v1.Coordinator/WatchRun", "/parrot.v1.Coordinator/CancelRun", "/parrot.v1.Coordinator/GetRunResults",
           "/parrot.v1.Coordinator/ResumeRun"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(METHODS), body=st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"\x12\x02\xff\xfe", b"\x0a\x03\x12\x01\xc3", b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f"]),
))
def test_bytes_that_are_not_a_valid_message(stack, method, body):
    """Undecodable requests (invalid UTF-8 in string fields, truncated fields) are INVALID_ARGUMENT."""
    ch = stack["cch"] if "Coordinator" in method else stack["mch"]
    if method.endswith(("RespondStream", "WatchRun")):
        fn = ch.unary_stream(method, request_serializer=None, response_deserializer=None)
    else:
        fn = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
    call(fn, body)


# ------------------------------------------------------------------------ coordinator

def question_files() -> st.SearchStrategy[bytes]:
    record = st.fixed_dictionaries({}, optional={
        "question_id": st.one_of(st.integers(-5, 10**20), texts, st.none(), st.floats()),
        "category": st.one_of(texts, st.integers()),
        "turns": st.one_of(st.lists(texts, max_size=4), texts, st.lists(st.integers(), max_size=2)),
        "reference": st.one_of(st.lists(texts, max_size=2), st.none())})
    return st.one_of(
        st.binary(max_size=300),  # invalid UTF-8, NULs, anything
        st.lists(record, max_size=4).map(jsonl),
        st.lists(st.one_of(record, st.integers(), st.text(max_size=5)), max_size=4).map(lambda rs: json.dumps(rs).encode()),
    )


def seed_files() -> st.SearchStrategy[bytes]:
    turn = st.tuples(st.one_of(st.sampled_from(["human", "gpt", "system", "user", "x"]), st.text(max_size=4)), texts)
    rec = st.builds(lambda i, ts: sharegpt(i, *ts), texts, st.lists(turn, max_size=4))
    return st.one_of(st.binary(max_size=300), st.lists(rec, max_size=3).map(jsonl),
                     st.lists(texts, max_size=4).map(lambda qs: "\n".join(qs).encode()))


@st.composite
def run_specs(draw, stack_target: str) -> cpb.RunSpec:
    spec = cpb.RunSpec(name=draw(texts), limit=draw(u32), concurrency=draw(u32), seed=draw(u64),
                       params=draw(gen_params()), labels=draw(st.dictionaries(texts, texts, max_size=3)))
    spec.retry.CopyFrom(cpb.RetryPolicy(max_attempts=draw(u32), initial_backoff_s=draw(st.floats()),
                                        max_backoff_s=draw(st.floats()), call_deadline_s=draw(st.floats())))
    url = draw(st.one_of(st.just(""), texts, st.sampled_from([
        "file:///nonexistent/x.jsonl", "/dev/null", "s3://bucket/key", "runs/../../etc", "file://", "s3://", "s3:///k",
        "file:///dev/zero/x", "file:///dev/zero", "/proc/self/fd/0", "runs/", "x" * 2000])))
    f = cpb.InputFile(name=draw(texts), url=url)
    kind = draw(st.sampled_from(["collection", "evaluation", None]))
    if kind == "collection":
        f.content = draw(st.one_of(st.just(b""), seed_files()))
        spec.collection.CopyFrom(cpb.CollectionSpec(seeds=f, seed_format=draw(st.one_of(texts, st.sampled_from(
            ["auto", "sharegpt", "queries"]))), min_turns=draw(u32), max_turns=draw(u32), min_query_chars=draw(u32),
            near_duplicate_threshold=draw(st.floats()), persona=draw(texts), max_asks_per_turn=draw(u32)))
    elif kind == "evaluation":
        f.content = draw(st.one_of(st.just(b""), question_files()))
        spec.evaluation.CopyFrom(cpb.EvaluationSpec(questions=f, model_id=draw(texts), judge_prompt=draw(texts),
                                                    pairwise=draw(st.booleans()), judge_max_tokens=draw(u32)))
    # Targets only on loopback (or malformed): fuzzing must not send traffic anywhere else.
    targets = st.sampled_from(["", stack_target, "127.0.0.1:1", "ipv4:not-an-address", "unix:/nonexistent/sock",
                               "[::1", "127.0.0.1:99999"])
    spec.targets.CopyFrom(cpb.Targets(responder=draw(targets), asker=draw(targets), judge=draw(targets),
                                      baseline_responder=draw(targets)))
    return spec


def run_folders(store: Path) -> set[str]:
    return {p.name for p in (store / "runs").glob("*")} if (store / "runs").is_dir() else set()


@EXAMPLES
@given(data=st.data())
def test_coordinator_start_run_never_half_starts(stack, data):
    spec = data.draw(run_specs(stack["models"].grpc_target))
    stub = coordinator_pb2_grpc.CoordinatorStub(stack["cch"])
    before = run_folders(stack["store"])
    code = call(stub.StartRun, cpb.StartRunRequest(spec=spec), timeout=60)
    after = run_folders(stack["store"])
    if code == grpc.StatusCode.OK:
        assert len(after - before) == 1
    else:  # rejected: nothing stored, no run listed
        assert after == before


run_ids = st.one_of(texts, st.sampled_from(["run-20261121-000000-abcdef", "../runs", "runs/x", "a" * 2000, ".", "\x7f"]))


@EXAMPLES
@given(run_id=run_ids, limit=u32, include=st.booleans(), retry_failed=st.booleans())
def test_coordinator_run_lookups(stack, run_id, limit, include, retry_failed):
    stub = coordinator_pb2_grpc.CoordinatorStub(stack["cch"])
    call(stub.GetRun, cpb.GetRunRequest(run_id=run_id))
    call(stub.ListRuns, cpb.ListRunsRequest(limit=limit))
    call(stub.WatchRun, cpb.WatchRunRequest(run_id=run_id))
    call(stub.GetRunResults, cpb.GetRunResultsRequest(run_id=run_id, include_content=include))
    call(stub.CancelRun, cpb.CancelRunRequest(run_id=run_id))
    call(stub.ResumeRun, cpb.ResumeRunRequest(run_id=run_id, retry_failed=retry_failed))


def test_services_still_serve_after_the_fuzzing(stack):
    assert_serving(stack["mch"], "parrot.v1.Responder")
    assert_serving(stack["mch"], "parrot.v1.Judge")
    assert_serving(stack["cch"], "parrot.v1.Coordinator")
    r = responder_pb2_grpc.ResponderStub(stack["mch"]).Respond(responder_pb2.RespondRequest(
        conversation=conv_pb2.Conversation(messages=[conv_pb2.Message(role=conv_pb2.ROLE_USER, content="still there?")])),
        timeout=30)
    assert r.text


# ------------------------------------------------------------------------ file loaders


def _check_loader_error(err: Exception, name: str) -> None:
    text = str(err)
    assert name in text, text  # names the file ...
    assert text.count(":") >= 1 and len(text) < 2000, text  # ... a bounded, one-line-ish message


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=question_files())
def test_question_file_loader(data):
    from parrot.datasets import DatasetError, load_questions

    try:
        questions = load_questions("q.jsonl", data)
    except DatasetError as e:
        _check_loader_error(e, "q.jsonl")
        assert e.file == "q.jsonl" and (e.line is None or e.line >= 1)
    else:
        for q in questions:
            assert q.turns and all(isinstance(t, str) and t.strip() for t in q.turns)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=seed_files(), fmt=st.sampled_from(["auto", "sharegpt", "queries"]))
def test_sharegpt_and_seed_loaders(data, fmt):
    from parrot.datasets import DatasetError, load_seeds
    from parrot.datasets.sharegpt import load_sharegpt

    for fn in (lambda: load_seeds("seeds.jsonl", data, fmt), lambda: list(load_sharegpt("seeds.jsonl", data))):
        try:
            fn()
        except DatasetError as e:
            _check_loader_error(e, "seeds.jsonl")


prompt_records = st.fixed_dictionaries({}, optional={
    "name": texts, "type": st.one_of(st.sampled_from(["single", "pairwise"]), texts, st.integers()),
    "system_prompt": st.one_of(texts, st.none()), "prompt_template": st.one_of(
        texts, st.sampled_from(["{question} {answer}", "{question_1} {answer_9} {ref_answer_1}", "{", "{answer_a_1}}"])),
    "output_format": st.one_of(texts, st.sampled_from(["[[rating]]", "[[A]]"])), "category": texts,
    "version": st.one_of(texts, st.integers())})


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.one_of(st.binary(max_size=200), st.lists(prompt_records, max_size=3).map(jsonl)))
def test_judge_prompt_file_loader(tmp_path_factory, data):
    from parrot.judging import PromptFileError, load_prompts

    path = tmp_path_factory.mktemp("prompts") / "judge_prompts.jsonl"
    path.write_bytes(data)
    try:
        load_prompts(path)
    except PromptFileError as e:
        _check_loader_error(e, "judge_prompts.jsonl")


run_spec_yaml = st.one_of(
    st.binary(max_size=200),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
                 lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
                     st.sampled_from(["name", "collection", "evaluation", "seeds", "questions", "concurrency", "retry",
                                      "min_turns", "params", "targets", "x"]), inner, max_size=4)),
                 max_leaves=15).map(lambda obj: json.dumps(obj).encode()),  # JSON is YAML
)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=run_spec_yaml)
def test_run_spec_file_loader(tmp_path, data):
    """`parrot eval/collect --spec FILE`: any file is a spec or a clear CLI error (exit 2) naming the file."""
    import click
    import typer

    from parrot.cli.runs import build_spec

    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    try:
        build_spec(str(path), "evaluation", {}, {})
    except (typer.Exit, click.exceptions.Exit, SystemExit) as e:
        assert getattr(e, "exit_code", getattr(e, "code", None)) == 2


def test_float_and_integer_edges_are_rejected_by_name():
    """A few fixed edge cases alongside the generated ones (regressions found while fuzzing stay here)."""
    from parrot.conversation import InputLimits, resolve_params
    from parrot.errors import InvalidArgument, LimitExceeded

    for kwargs, field in [({"temperature": math.nan}, "params.temperature"), ({"top_p": -0.0}, "params.top_p"),
                          ({"temperature": math.inf}, "params.temperature"), ({"seed": 2**64 - 1}, "params.seed")]:
        with pytest.raises(InvalidArgument) as e:
            resolve_params(**{"max_tokens": 0, "temperature": None, "top_p": None, "stop": (), "seed": None, **kwargs},
                           default_max_tokens=16, limits=InputLimits())
        assert e.value.field == field
    with pytest.raises(LimitExceeded) as e:
        resolve_params(max_tokens=2**32 - 1, temperature=None, top_p=None, stop=(), seed=None, default_max_tokens=16,
                       limits=InputLimits())
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "PARROT_MAX_NEW_TOKENS" in str(e.value)
