"""The deploy files parse, validate offline, agree with each other and use only metrics the worker exports.

No Docker engine or Kubernetes cluster runs where these tests run: what can be checked offline is checked
(YAML/JSON, the Compose schema, `docker compose config` when the client has the compose plugin,
Kubernetes schemas from kubernetes-validate, KEDA's own CRD schemas, `promtool` when installed), and
every check that needs a missing tool skips with the reason.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).with_name("schemas")
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "docker-compose.gpu.yml"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "livemod.json"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
TOPICS_SCRIPT = K8S / "create-topics.sh"

# Metrics the deploy files may use before the worker exports them: added by the service-core change
# (issue 8). Used only while stream/metrics.py lacks them; remove this once they exist.
ADDED_BY_SERVICE_CORE: dict[str, tuple[str, tuple[str, ...]]] = {
    "livemod_sample_gap_seconds": ("histogram", ()),
    "livemod_dlq_send_failures": ("counter", ()),
    "livemod_partitions_blocked": ("gauge", ()),
}
# labels every scraped series has, or that PromQL adds
SCRAPE_LABELS = {"instance", "job"}


# ---- helpers -------------------------------------------------------------------------------


def _yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, doc) for doc in _yaml_docs(path))
    return out


def _k8s(kind: str, name: str | None = None) -> dict:
    found = [o for _, o in _k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} with the defaults (no variable set)."""
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", value)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _worker_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if "build" in s}


def _settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    from livemod.stream.settings import Settings

    for key in list(os.environ):
        if key.startswith("LIVEMOD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return Settings()


def _configmap_env() -> dict[str, str]:
    return {k: str(v) for k, v in _k8s("ConfigMap", "livemod-settings")["data"].items()}


def _dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def _bootstrap_hosts(faust_url: str) -> list[str]:
    return [h.removeprefix("kafka://") for h in faust_url.split(";")]


# ---- every file parses ----------------------------------------------------------------------

DEPLOY_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json") and p.is_file())


def test_deploy_files_found():
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY_FILES}
    assert {"docker-compose.yml", "prometheus/alerts.yml", "prometheus/prometheus.yml",
            "grafana/dashboards/livemod.json", "k8s/deployment.yaml", "k8s/keda-scaledobject.yaml"} <= names


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_file_parses(path):
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict)
    else:
        docs = _yaml_docs(path)
        assert docs and all(isinstance(d, dict) for d in docs)


# ---- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_copies_every_package_folder():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = set(conf["package-dir"].values())
    copied = set(re.findall(r"^COPY (\w+) \1$", (DEPLOY / "Dockerfile").read_text(), re.M))
    assert folders <= copied, f"deploy/Dockerfile does not COPY {sorted(folders - copied)}"


def test_dockerfile_env_and_port_match_settings(monkeypatch):
    env = _dockerfile_env()
    assert {k for k in env if k.startswith("LIVEMOD_")}, "no LIVEMOD_* defaults in the Dockerfile"
    s = _settings_from_env(monkeypatch, {k: v for k, v in env.items() if k.startswith("LIVEMOD_")})
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"EXPOSE {s.worker.web_port}" in text
    assert s.worker.web_host == "0.0.0.0"
    assert re.search(r'^ENTRYPOINT \["livemod", "worker"\]', text, re.M)
    assert "livemod models prepare" in text


# ---- compose --------------------------------------------------------------------------------


def test_compose_matches_the_compose_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (kubernetes-validate brings it)")
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for path in (COMPOSE, COMPOSE_GPU):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path.name}: {errors}"
    broken = {"services": {"kafka": {"image": "apache/kafka", "healthchek": {}}}}  # the schema does catch typos
    assert any(True for _ in validator.iter_errors(broken))


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin), or a Compose v2 `docker-compose` binary; None when neither answers."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and re.search(r"version v?2\.", out.stdout):
            return cmd
    return None


def test_docker_compose_config():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2: `docker compose version` fails (the docker client here has no compose "
                    "plugin) and no v2 `docker-compose` is on PATH")
    for files in ([COMPOSE], [COMPOSE, COMPOSE_GPU]):
        args = [a for f in files for a in ("-f", str(f))]
        out = subprocess.run([*cli, *args, "config", "--quiet"], capture_output=True, text=True, timeout=60,
                             cwd=REPO)
        assert out.returncode == 0, out.stderr


def test_compose_stack_shape():
    c = _compose()
    services = c["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, no ZooKeeper
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    init = services["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["entrypoint"][-1] == "/create-topics.sh"
    workers = _worker_services(c)
    assert len(workers) == 2
    for name, w in workers.items():
        assert w["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / w["build"]["context"] / w["build"]["dockerfile"]).is_file()
        assert w["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        assert w["environment"]["LIVEMOD_WORKER__ID"] == name
        assert "/ready" in " ".join(w["healthcheck"]["test"])
    assert {"prometheus", "grafana"} <= set(services)


def test_compose_bind_mounts_exist():
    for name, svc in _compose()["services"].items():
        for vol in svc.get("volumes", []):
            source = _interpolate(vol.split(":")[0])
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_compose_worker_settings_load(monkeypatch):
    c = _compose()
    for name, w in _worker_services(c).items():
        env = {k: _interpolate(str(v)) for k, v in w["environment"].items()}
        s = _settings_from_env(monkeypatch, env)
        assert s.worker.id == name
        assert _bootstrap_hosts(s.kafka.bootstrap_servers) == ["kafka:9092"]
        assert s.worker.web_port == 6066
    init_env = {k: _interpolate(str(v)) for k, v in c["services"]["kafka-init"]["environment"].items()}
    s = _settings_from_env(monkeypatch, init_env)
    assert str(s.kafka.partitions) == _interpolate(str(c["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]))


def test_prometheus_scrapes_both_workers():
    c = _compose()
    conf = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = conf["scrape_configs"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    port = 6066
    assert targets == {f"{name}:{port}" for name in _worker_services(c)}
    assert job["job_name"] == "livemod" and job.get("metrics_path", "/metrics") == "/metrics"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in c["services"]["prometheus"]["volumes"] if v.startswith(".")}
    for rule_file in conf["rule_files"]:
        assert (DEPLOY / mounts[rule_file]).resolve() == RULES.resolve()


def test_grafana_provisioning_points_at_the_dashboard():
    c = _compose()
    mounts = {v.split(":")[1]: v.split(":")[0] for v in c["services"]["grafana"]["volumes"] if v.startswith(".")}
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/livemod.yml").read_text())["providers"][0]
    assert (DEPLOY / mounts[provider["options"]["path"]]).resolve() == DASHBOARD.parent.resolve()
    assert (DEPLOY / mounts["/etc/grafana/provisioning"]).resolve() == (DEPLOY / "grafana/provisioning").resolve()
    (ds,) = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for p in _panels() for t in p.get("targets", [])}
    assert uids == {ds["uid"]}


def test_kafka_image_versions_agree():
    tags = {_compose()["services"][n]["image"] for n in ("kafka", "kafka-init")}
    tags.add(_k8s("Job", "livemod-topics")["spec"]["template"]["spec"]["containers"][0]["image"])
    assert len(tags) == 1, tags
    fetch = REPO / "tests" / "kafka" / "fetch.py"  # the Kafka the broker tests run, where that lane exists
    if fetch.is_file():
        m = re.search(r'^KAFKA_VERSION = "([^"]+)"', fetch.read_text(), re.M)
        if m:
            assert tags == {f"apache/kafka:{m.group(1)}"}


# ---- Kubernetes -----------------------------------------------------------------------------

CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "Job"}


def _kubernetes_validate() -> Any:
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (the `test` extra)")


@pytest.mark.parametrize("obj", [o for _, o in _k8s_objects() if o["kind"] in CORE_KINDS],
                         ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_k8s_manifest_matches_kubernetes_schema(obj):
    kv = _kubernetes_validate()
    kv.validate(obj, kv.latest_version(), strict=True)


def test_k8s_schema_check_catches_typos():
    kv = _kubernetes_validate()
    bad = copy.deepcopy(_k8s("Deployment"))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_k8s_kinds_are_covered():
    kinds = {o["kind"] for _, o in _k8s_objects()}
    assert kinds == CORE_KINDS | {"ScaledObject", "TriggerAuthentication"}
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}


def _crd_schema(crd_file: str) -> dict:
    """A CRD's openAPIV3Schema made strict: unknown fields are errors (the API server would drop them)."""
    crd = yaml.safe_load((SCHEMAS / crd_file).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            if node.get("nullable") and "type" in node:
                node["type"] = [node["type"], "null"]
        elif isinstance(node, list):
            node = [strict(v) for v in node]
        return node

    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    return schema


@pytest.mark.parametrize("kind, crd", [("ScaledObject", "keda.sh_scaledobjects.yaml"),
                                       ("TriggerAuthentication", "keda.sh_triggerauthentications.yaml")])
def test_keda_objects_match_keda_crds(kind, crd):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (kubernetes-validate brings it)")
    validator = jsonschema.Draft7Validator(_crd_schema(crd))
    obj = _k8s(kind)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    assert not errors
    bad = copy.deepcopy(obj)
    bad["spec"]["pollingIntervall"] = 30
    assert any(True for _ in validator.iter_errors(bad))


def test_k8s_settings_load_and_match(monkeypatch):
    deployment = _k8s("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = _configmap_env()
    for e in container["env"]:
        env[e["name"]] = e.get("value", "from-" + next(iter(e["valueFrom"])))
    s = _settings_from_env(monkeypatch, env)
    assert s.kafka.sasl_password is not None and s.kafka.security_protocol.startswith("SASL")
    # the container's port, the probes and the Service all use the worker's web port
    (port,) = container["ports"]
    assert port["containerPort"] == s.worker.web_port
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(s.worker.web_port)
    # the ScaledObject watches the group and topic the workers use, on the same brokers
    so = _k8s("ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == s.kafka.app_id
    assert meta["topic"] == s.kafka.frame_refs_topic
    assert meta["bootstrapServers"].split(",") == _bootstrap_hosts(s.kafka.bootstrap_servers)
    assert meta["sasl"] == s.kafka.sasl_mechanism.lower().replace("-", "_").replace("scram_sha_", "scram_sha")
    assert (meta["tls"] == "enable") == s.kafka.security_protocol.endswith("SSL")
    assert so["spec"]["minReplicaCount"] >= 1
    assert so["spec"]["maxReplicaCount"] <= s.kafka.partitions
    assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_k8s_deployment_gpu_probes_and_references():
    deployment = _k8s("Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert [r["configMapRef"]["name"] for r in c["envFrom"]] == ["livemod-settings"]
    secret = _k8s("Secret", "livemod-kafka")
    refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    refs += [e["valueFrom"]["secretKeyRef"] for e in _k8s("Job")["spec"]["template"]["spec"]["containers"][0]["env"]
             if "secretKeyRef" in e.get("valueFrom", {})]
    refs += [{"name": r["name"], "key": r["key"]} for r in _k8s("TriggerAuthentication")["spec"]["secretTargetRef"]]
    assert refs and all(r["name"] == "livemod-kafka" and r["key"] in secret["stringData"] for r in refs)
    assert "LIVEMOD_KAFKA__SASL_PASSWORD" not in _configmap_env()
    # the Service and the PodDisruptionBudget select the worker pods
    for kind in ("Service", "PodDisruptionBudget"):
        obj = _k8s(kind)
        selector = obj["spec"]["selector"].get("matchLabels", obj["spec"]["selector"])
        assert selector.items() <= labels.items(), kind
    service = _k8s("Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in c["ports"]}
    assert service["metadata"]["name"] == "livemod"  # the scrape job label the alert rules use


def test_kustomize_renders():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH (`kubectl kustomize` renders offline)")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert all(o["metadata"].get("namespace", "livemod") == "livemod" for o in objs)
    (script,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("livemod-topics-script")]
    assert script["data"]["create-topics.sh"] == TOPICS_SCRIPT.read_text()
    (job,) = [o for o in objs if o["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == script["metadata"]["name"]


# ---- the topics script ---------------------------------------------------------------------
# Its own logic (names, counts, configs, the count check), with kafka-topics.sh replaced by a recorder
# that answers --describe with the count it was created with (or a preset one). Against a real broker
# it is run by the compose stack and the Job, which these machines cannot start.

RECORDER = r"""#!/usr/bin/env bash
echo "$*" >>"$TOPICS_LOG"
name=""; parts=""
while [[ $# -gt 0 ]]; do
  case $1 in --topic) name=$2; shift ;; --partitions) parts=$2; shift ;; esac; shift
done
store="$TOPICS_STATE/$name"
if [[ -n $parts && ! -e $store ]]; then echo "$parts" >"$store"; fi
if [[ -e $store ]]; then printf 'Topic: %s\tTopicId: x\tPartitionCount: %s\tReplicationFactor: 1\tConfigs:\n' "$name" "$(cat "$store")"; fi
"""


def _run_topics_script(tmp_path: Path, env: dict[str, str], existing: dict[str, int] | None = None,
                       recorder_text: str = RECORDER) -> tuple[Any, list[str]]:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bin_dir = tmp_path / "bin"
    state = tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    recorder = bin_dir / "kafka-topics.sh"
    recorder.write_text(recorder_text)
    recorder.chmod(0o755)
    for name, n in (existing or {}).items():
        (state / name).write_text(f"{n}\n")
    log = tmp_path / "calls.log"
    full_env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(bin_dir), "TOPICS_LOG": str(log),
                "TOPICS_STATE": str(state), **env}
    out = subprocess.run(["bash", str(TOPICS_SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60)
    return out, log.read_text().splitlines() if log.exists() else []


def _service_topics() -> Any:
    try:
        from livemod.stream.topics import service_topics
    except ImportError:  # before the service-core change
        from livemod.stream.service import service_topics
    return service_topics


def _created(calls: list[str]) -> dict[str, tuple[int, str]]:
    out = {}
    for call in calls:
        if "--create" in call:
            args = call.split()
            out[args[args.index("--topic") + 1]] = (int(args[args.index("--partitions") + 1]), call)
    return out


@pytest.mark.parametrize("source", ["defaults", "configmap", "compose"])
def test_topics_script_creates_the_service_topics(tmp_path, monkeypatch, source):
    if source == "defaults":
        env: dict[str, str] = {}
    elif source == "configmap":
        env = {**_configmap_env(), "LIVEMOD_KAFKA__SASL_USERNAME": "u", "LIVEMOD_KAFKA__SASL_PASSWORD": "p"}
    else:
        env = {k: _interpolate(str(v)) for k, v in _compose()["services"]["kafka-init"]["environment"].items()}
    s = _settings_from_env(monkeypatch, env)
    out, calls = _run_topics_script(tmp_path, env)
    assert out.returncode == 0, out.stderr
    created = _created(calls)
    want = dict(_service_topics()(s)) | {f"{s.kafka.app_id}-__assignor-__leader": 1}
    assert {name: n for name, (n, _) in created.items()} == want
    assert all(f"--replication-factor {s.kafka.replication_factor}" in call for _, call in created.values())
    assert "cleanup.policy=compact" in created[f"{s.kafka.app_id}-stream-state-changelog"][1]
    min_isr = 2 if s.kafka.replication_factor >= 3 else 1
    assert all(f"min.insync.replicas={min_isr}" in call for _, call in created.values())
    servers = ",".join(_bootstrap_hosts(s.kafka.bootstrap_servers))
    assert all(f"--bootstrap-server {servers} " in call for call in calls)


def test_topics_script_refuses_a_topic_with_another_count(tmp_path):
    out, _ = _run_topics_script(tmp_path, {"LIVEMOD_KAFKA__PARTITIONS": "8"}, existing={"frame-refs": 4})
    assert out.returncode == 1
    assert "frame-refs has 4 partitions, livemod needs 8" in out.stderr


def test_topics_script_writes_sasl_client_config(tmp_path):
    # the --command-config file is deleted on exit: read it from inside the recorder
    env = {"LIVEMOD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "LIVEMOD_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
           "LIVEMOD_KAFKA__SASL_USERNAME": "svc", "LIVEMOD_KAFKA__SASL_PASSWORD": "s3cret",
           "LIVEMOD_KAFKA__SSL_CAFILE": "/etc/ca.pem"}
    keep_config = RECORDER.replace('echo "$*" >>"$TOPICS_LOG"',
                                   'echo "$*" >>"$TOPICS_LOG"; for a in "$@"; do [[ -f $a ]] && cat "$a" >"$TOPICS_STATE.cfg"; done')
    out, _ = _run_topics_script(tmp_path, env, recorder_text=keep_config)
    assert out.returncode == 0, out.stderr
    cfg = (tmp_path / "state.cfg").read_text()
    assert "security.protocol=SASL_SSL" in cfg
    assert "sasl.mechanism=SCRAM-SHA-512" in cfg
    assert 'ScramLoginModule required username="svc" password="s3cret";' in cfg
    assert "ssl.truststore.location=/etc/ca.pem" in cfg
    assert "s3cret" not in out.stdout + out.stderr


# ---- Prometheus rules ----------------------------------------------------------------------


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("no promtool on PATH (Debian: the prometheus package); the structure is checked without it")
    return path


def test_promtool_check_rules():
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules():
    # deploy/prometheus/alerts_test.yml: series in, the alerts (labels, annotations, timing) expected out
    out = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], capture_output=True, text=True, timeout=120,
                         cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_config(tmp_path):
    conf = yaml.safe_load(PROMETHEUS.read_text())
    conf["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    out = subprocess.run([_promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_parses_the_dashboard_queries(tmp_path):
    promtool = _promtool()
    rules = [{"record": f"dashboard:query_{i}", "expr": _concrete(e)} for i, e in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
REQUIRED_ALERTS = {
    "LivemodConsumerLagGrowing", "LivemodDeadLetterRate", "LivemodNoFrames", "LivemodLatencySLOFastBurn",
    "LivemodLatencySLOSlowBurn", "LivemodWorkerNotReady", "LivemodPartitionsBlocked",
}


def test_rules_structure():
    rules = _rules()
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert REQUIRED_ALERTS <= set(alerts)
    for r in rules:
        assert ("alert" in r) != ("record" in r), r
        assert isinstance(r["expr"], str) and r["expr"].strip()
        assert _balanced(r["expr"]), r["expr"]
    for name, a in alerts.items():
        assert DURATION.match(a.get("for", "0s")), name
        assert a["labels"]["severity"] in ("warning", "critical"), name
        assert a["annotations"]["summary"], name
    for r in rules:
        if "record" in r:
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r["record"]), r["record"]
    # `up` is selected by the scrape job Prometheus uses for the workers
    job = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][0]["job_name"]
    assert all(f'up{{job="{job}"}}' in r["expr"] for r in rules if re.search(r"\bup\b", r["expr"]))


def _balanced(expr: str) -> bool:
    depth = 0
    for ch in expr:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# ---- Grafana dashboard ---------------------------------------------------------------------


def _panels() -> Iterator[dict]:
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        yield p
        yield from p.get("panels", [])


def _dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in _panels() for t in p.get("targets", [])]
    for var in d["templating"]["list"]:
        q = var["query"]
        exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def _concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so promtool can parse it."""
    expr = re.sub(r"label_values\((\w+), *\w+\)", r"\1", expr)
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$instance", ".*")


def test_dashboard_structure():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "livemod"
    panels = list(_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("frames /s", "streams", "batch size", "inference latency", "end-to-end latency", "consumer lag",
                  "re-checks", "alerts by rule", "dead letters by reason", "sampling gaps"):
        assert topic in titles, topic
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["targets"] and all(t["expr"].strip() and _balanced(t["expr"]) for t in p["targets"]), p["title"]
    # no two panels overlap on the grid
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


# ---- every metric used is one the worker exports -------------------------------------------


def _exported() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Sample names the worker exports -> their label names, and each histogram's `le` values."""
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.utils import floatToGoString

    from livemod.stream.metrics import Metrics

    m = Metrics()
    samples: dict[str, set[str]] = {}
    buckets: dict[str, set[str]] = {}
    found = {metric._name: metric for metric in vars(m).values() if isinstance(metric, (Counter, Gauge, Histogram))}
    kinds = {name: (type(metric).__name__.lower(), tuple(metric._labelnames)) for name, metric in found.items()}
    for name, spec in ADDED_BY_SERVICE_CORE.items():
        kinds.setdefault(name, spec)
    for name, (kind, labels) in kinds.items():
        suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                    "histogram": ("_bucket", "_sum", "_count", "_created")}[kind]
        for suffix in suffixes:
            samples[name + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set())
    for name, metric in found.items():
        if isinstance(metric, Histogram):  # `le` as prometheus_client writes it: 5 -> "5.0"
            buckets[name + "_bucket"] = {floatToGoString(b) for b in metric._upper_bounds}
    return samples, buckets


def _used_exprs() -> list[tuple[str, str]]:
    out = [(f"dashboard: {e}", e) for e in _dashboard_exprs()]
    out += [(f"rules: {r.get('alert') or r.get('record')}", r["expr"]) for r in _rules()]
    return out


def test_every_metric_used_is_exported():
    samples, _ = _exported()
    recorded = {r["record"] for r in _rules() if "record" in r}
    unknown = []
    for where, expr in _used_exprs():
        for name in re.findall(r"\blivemod[_:][a-zA-Z0-9_:]*", expr):
            if name not in samples and name not in recorded:
                unknown.append(f"{where}: {name}")
    assert not unknown, "metrics the worker does not export:\n" + "\n".join(unknown)


def test_every_label_used_exists():
    samples, buckets = _exported()
    recorded = {}  # a recording rule's labels: those of its outer `by (...)`
    for r in _rules():
        if "record" in r:
            m = re.match(r"\s*\w+\s+by\s*\(([^)]*)\)", r["expr"])
            recorded[r["record"]] = {x.strip() for x in m.group(1).split(",")} if m else set()
    known = {**samples, **recorded}
    bad = []
    for where, expr in _used_exprs():
        # selectors: metric{label="..."}
        for name, body in re.findall(r"\b(livemod[_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
            for label, value in re.findall(r'(\w+)\s*[=!~]+\s*"([^"]*)"', body):
                if label not in known.get(name, set()) | SCRAPE_LABELS:
                    bad.append(f"{where}: {name} has no label {label}")
                if label == "le" and value not in buckets.get(name, {value}):
                    bad.append(f"{where}: {name} has no bucket le={value!r} (has {sorted(buckets[name])})")
        # aggregations: by (a, b) (...metric...)
        for m in re.finditer(r"\bby\s*\(([^)]*)\)\s*\(", expr):
            labels = {x.strip() for x in m.group(1).split(",") if x.strip()}
            inner = _paren_body(expr, m.end() - 1)
            names = re.findall(r"\b(livemod[_:][a-zA-Z0-9_:]*)", inner)
            allowed = set(SCRAPE_LABELS).union(*(known.get(n, set()) for n in names))
            if names and not labels <= allowed:
                bad.append(f"{where}: by {sorted(labels - allowed)} not labels of {sorted(set(names))}")
    assert not bad, "\n".join(bad)


def _paren_body(expr: str, start: int) -> str:
    depth = 0
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[start + 1:i]
    return expr[start + 1:]


def test_metric_check_catches_unknown_names_and_labels():
    samples, buckets = _exported()
    assert "livemod_frames_decoded_total" in samples and "livemod_frames_decoded" not in samples
    assert samples["livemod_dlq_messages_total"] == {"topic", "reason"}
    assert "5.0" in buckets["livemod_end_to_end_seconds_bucket"] and "5" not in buckets["livemod_end_to_end_seconds_bucket"]
