"""deploy/helm/sensorstream: lints, renders, and the rendered objects are right.

No Kubernetes cluster runs here: these tests lint the chart, render it with `helm template`
under several sets of values and check the objects against the services themselves (the
settings models, the HTTP server's paths, the images' users). Helm comes from
deploy/install-helm, which builds it once per machine from the Go module proxy; the
session fails, never skips, when it cannot.
"""

from __future__ import annotations

import base64
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO
from pydantic_settings import BaseSettings

from sensorstream.bridge.settings import BridgeSettings
from sensorstream.processor.settings import ProcessorSettings
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime.topics import TopicsSettings
from sensorstream.sink.settings import SinkSettings

CHART = REPO / "deploy" / "helm" / "sensorstream"
DOC = REPO / "docs" / "kubernetes.md"
# The first test of a session on a fresh machine waits for the Helm build (about 2-7 min
# on 2 cores, docs/kubernetes.md), beyond the suite's 300 s; `make test` builds it before
# pytest starts (`make helm`), and each helm call here has its own 120 s limit.
pytestmark = pytest.mark.timeout(1200)
RELEASE = "ss"
SECRETS_DIR = "/var/run/secrets/sensorstream"

# Each component (app.kubernetes.io/component) and the settings model of what it runs.
SETTINGS: dict[str, type[BaseSettings]] = {
    "producer": ProducerSettings,
    "processor": ProcessorSettings,
    "bridge": BridgeSettings,
    "sink": SinkSettings,
    "topics": TopicsSettings,
}
DOCKERFILES = {
    "producer": "services/producer/Dockerfile",
    "processor": "services/processor/Dockerfile",
    "topics": "services/processor/Dockerfile",
    "bridge": "services/bridge/Dockerfile",
    "sink": "services/sink/Dockerfile",
}
# The variables that would carry a secret in plain text; only their _FILE forms may appear.
PLAIN_SECRETS = {
    "SENSORSTREAM_SASL_PASSWORD",
    "SENSORSTREAM_SSL_KEY_PASSWORD",
    "SENSORSTREAM_METRICS_AUTH_PASSWORD",
    "SENSORSTREAM_MQTT_PASSWORD",
    "SENSORSTREAM_DATABASE_PASSWORD",
    "SENSORSTREAM_DATABASE_URL",
}
PASSWORDS = {
    "saslPassword": "sasl-pw-3f9a1c",
    "sslKeyPassword": "key-pw-77b2e0",
    "metricsAuthPassword": "metrics-pw-c41d95",
    "mqttPassword": "mqtt-pw-08aa6f",
    "databasePassword": "db-pw-5e13b7",
}
EVERYTHING = {
    "bridge": {"enabled": True},
    "sink": {"enabled": True},
    "secrets": {"databasePassword": PASSWORDS["databasePassword"]},
    "monitoring": {"enabled": True},
    "processor": {"autoscaling": {"keda": {"enabled": True}}},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "keda": {"processor": {"autoscaling": {"keda": {"enabled": True}}}},
    "hpa": {
        "processor": {"autoscaling": {"hpa": {"enabled": True}}},
        "monitoring": {"enabled": True, "kind": "PodMonitor"},
    },
    "everything": EVERYTHING,
    # Other topic, group and partition count: the autoscaler must follow them.
    "renamed": {
        "topics": {"input": "plant-7.readings", "partitions": 12, "replicationFactor": 3},
        "processor": {
            "groupId": "plant-7-processor",
            "autoscaling": {"keda": {"enabled": True, "maxReplicaCount": 8}},
        },
        "shutdownTimeout": 42.5,
        "producer": {"env": {"SENSORSTREAM_SHUTDOWN_TIMEOUT": "20"}},
    },
    "secure": {
        "kafka": {
            "bootstrapServers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
            "securityProtocol": "SASL_SSL",
            "saslMechanism": "SCRAM-SHA-512",
            "saslUsername": "sensorstream",
            "tls": {"existingSecret": "kafka-tls", "clientCertificate": True, "keyEncrypted": True},
        },
        "metricsAuth": {"username": "prometheus"},
        "metricsTls": {"existingSecret": "metrics-tls"},
        "secrets": dict(PASSWORDS),
        "bridge": {"enabled": True, "mqtt": {"username": "bridge"}},
        "sink": {"enabled": True},
        "monitoring": {"enabled": True, "tlsConfig": {"insecureSkipVerify": True}},
        "processor": {"autoscaling": {"keda": {"enabled": True}}},
    },
    "existing-secret": {
        "kafka": {"securityProtocol": "SASL_PLAINTEXT", "saslUsername": "sensorstream"},
        "secrets": {"existingSecret": "sensorstream-credentials"},
        "metricsAuth": {"username": "prometheus"},
        "sink": {"enabled": True},
        "processor": {"autoscaling": {"hpa": {"enabled": True}}},
    },
}


@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned Helm from deploy/install-helm (built on first use, then reused)."""
    result = subprocess.run(
        [str(REPO / "deploy" / "install-helm")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        pytest.fail(f"deploy/install-helm failed ({result.returncode}):\n{result.stderr}")
    path = result.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), result.stdout
    return path


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _template(
    helm: str, tmp_path: Path, values: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    values_file = _values_file(tmp_path, values)
    return _helm(helm, "template", RELEASE, str(CHART), "--namespace", "ns", "-f", str(values_file))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _defaults() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


class Rendered:
    """One `helm template` output, with the values it was rendered from."""

    def __init__(self, docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
        self.docs = docs
        self.values = _merge(_defaults(), values)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, component: str) -> dict[str, Any]:
        found = [doc for doc in self.of_kind(kind) if _component(doc) == component]
        assert len(found) == 1, (kind, component, [d["metadata"]["name"] for d in found])
        return found[0]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, (kind, name)
        return found[0]

    def workloads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(component, pod spec) of every Deployment and Job."""
        for doc in self.of_kind("Deployment") + self.of_kind("Job"):
            yield _component(doc), doc["spec"]["template"]["spec"]

    def environment(self, component: str, container: dict[str, Any]) -> dict[str, str]:
        """The container's variables: its ConfigMaps' data, then its own env."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            config_map = self.named("ConfigMap", source["configMapRef"]["name"])
            env.update({str(k): str(v) for k, v in (config_map.get("data") or {}).items()})
        for item in container.get("env", []):
            assert "value" in item, f"{component}: {item['name']} comes from elsewhere"
            env[item["name"]] = str(item["value"])
        return env


def _component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def _render(helm: str, tmp_path: Path, values: dict[str, Any]) -> Rendered:
    result = _template(helm, tmp_path, values)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Rendered(docs, values)


@pytest.fixture(scope="session")
def renders(helm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every scenario rendered once for the session (the objects are only read)."""
    return {
        name: _render(helm, tmp_path_factory.mktemp(f"render-{name}"), values)
        for name, values in SCENARIOS.items()
    }


@pytest.fixture(params=sorted(SCENARIOS))
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]


def _settings(component: str, env: dict[str, str], tmp_path: Path) -> tuple[Any, dict[str, str]]:
    """The component's settings as its container would load them: the image's baked-in
    SENSORSTREAM_* then the chart's; mounted secret files stand in as temporary files."""
    dockerfile = (REPO / DOCKERFILES[component]).read_text()
    values = {
        key.lower(): value
        for key, value in re.findall(r"\bSENSORSTREAM_([A-Z_]+)=(\S+)", dockerfile)
    }
    files: dict[str, str] = {}
    for key, value in env.items():
        if not key.startswith("SENSORSTREAM_"):
            continue
        if value.startswith(SECRETS_DIR + "/"):
            stand_in = tmp_path / "files" / value.removeprefix(SECRETS_DIR + "/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("stand-in secret\n")
            files[str(stand_in)] = value
            value = str(stand_in)
        values[key.removeprefix("SENSORSTREAM_").lower()] = value
    return SETTINGS[component].model_validate(values), files


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["containers"]
    assert len(containers) == 1
    assert not pod.get("initContainers")
    container: dict[str, Any] = containers[0]
    return container


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


class TestLint:
    @pytest.mark.parametrize("strict", [False, True], ids=["lint", "strict"])
    @pytest.mark.parametrize("scenario", ["defaults", "everything", "secure", "hpa"])
    def test_lint_passes(self, helm: str, tmp_path: Path, scenario: str, strict: bool) -> None:
        values_file = _values_file(tmp_path, SCENARIOS[scenario])
        result = _helm(
            helm, "lint", str(CHART), "-f", str(values_file), *(["--strict"] if strict else [])
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout, result.stdout

    def test_pinned_helm(self, helm: str) -> None:
        result = _helm(helm, "version", "--template", "{{.Version}}")
        assert (0, "v3.22.0") == (result.returncode, result.stdout.strip()), result.stderr

    def test_install_helm_is_idempotent(self, helm: str) -> None:
        """A second run finds the binary and only prints its path, quickly."""
        result = subprocess.run(
            [str(REPO / "deploy" / "install-helm")],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert (0, helm, "") == (result.returncode, result.stdout.strip(), result.stderr)
        assert not str(Path(helm).resolve()).startswith(str(REPO)), "cache outside the clone"


class TestDefaults:
    def test_objects(self, helm: str, tmp_path: Path) -> None:
        rendered = _render(helm, tmp_path, {})
        kinds = sorted((doc["kind"], _component(doc)) for doc in rendered.docs)
        assert ("Deployment", "producer") in kinds
        assert ("Deployment", "processor") in kinds
        assert ("Job", "topics") in kinds
        assert ("PodDisruptionBudget", "processor") in kinds
        assert ("Service", "processor") in kinds
        assert ("ConfigMap", "processor") in kinds
        # Off by default: the edges, the autoscalers, the monitors; no secret is needed.
        for kind in (
            "ScaledObject",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
            "PodMonitor",
            "Secret",
        ):
            assert not rendered.of_kind(kind), kind
        components = {_component(doc) for doc in rendered.of_kind("Deployment")}
        assert components == {"producer", "processor"}
        assert rendered.one("Deployment", "processor")["spec"]["replicas"] == 2

    def test_toggles_add_their_objects(self, helm: str, tmp_path: Path) -> None:
        rendered = _render(helm, tmp_path, EVERYTHING)
        components = {_component(doc) for doc in rendered.of_kind("Deployment")}
        assert components == {"producer", "processor", "bridge", "sink"}
        assert {_component(d) for d in rendered.of_kind("ServiceMonitor")} == components
        assert len(rendered.of_kind("ScaledObject")) == 1
        # The replica count is the autoscaler's: helm upgrade must not reset it.
        assert "replicas" not in rendered.one("Deployment", "processor")["spec"]

    def test_images(self, helm: str, tmp_path: Path) -> None:
        rendered = _render(
            helm,
            tmp_path,
            {
                "image": {"tag": "1.2.3", "pullPolicy": "Always"},
                "processor": {"image": {"repository": "registry.example/ss-processor"}},
                "producer": {"image": {"tag": "9.9.9"}},
            },
        )
        images = {c: _container(pod)["image"] for c, pod in rendered.workloads()}
        assert images == {
            "processor": "registry.example/ss-processor:1.2.3",
            "topics": "registry.example/ss-processor:1.2.3",
            "producer": "sensorstream-producer:9.9.9",
        }
        assert {_container(pod)["imagePullPolicy"] for _, pod in rendered.workloads()} == {"Always"}
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        default = _render(helm, tmp_path, {})
        assert _container(dict(default.workloads())["processor"])["image"] == (
            f"sensorstream-processor:{chart['appVersion']}"
        )


class TestSettings:
    def test_every_variable_is_a_setting(self, rendered: Rendered, tmp_path: Path) -> None:
        """Every SENSORSTREAM_* a container gets is a field of what it runs, and together
        they validate as that service would load them."""
        for component, pod in rendered.workloads():
            container = _container(pod)
            env = rendered.environment(component, container)
            fields = SETTINGS[component].model_fields
            unknown = [
                key
                for key in env
                if key.startswith("SENSORSTREAM_")
                and key.removeprefix("SENSORSTREAM_").lower() not in fields
            ]
            assert not unknown, f"{component}: not settings of {SETTINGS[component].__name__}"
            assert all(key.startswith("SENSORSTREAM_") for key in env), env
            _settings(component, env, tmp_path)

    def test_topics_job_is_a_hook_running_sensorstream_topics(self, rendered: Rendered) -> None:
        job = rendered.one("Job", "topics")
        hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
        assert sorted(hooks) == ["pre-install", "pre-upgrade"]
        pod = job["spec"]["template"]["spec"]
        container = _container(pod)
        assert container["command"] == ["/app/.venv/bin/sensorstream-topics"]
        assert pod["restartPolicy"] == "Never"
        # It runs before the release's objects exist: nothing of theirs may be needed.
        assert "envFrom" not in container
        assert "serviceAccountName" not in pod
        release_secret = f"{RELEASE}-sensorstream"
        for volume in pod["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                assert source["secret"]["name"] != release_secret
        env = rendered.environment("topics", container)
        topics = rendered.values["topics"]
        assert env["SENSORSTREAM_PARTITIONS"] == str(topics["partitions"])
        assert env["SENSORSTREAM_TOPIC"] == topics["input"]

    def test_every_service_listens_on_all_addresses(
        self, rendered: Rendered, tmp_path: Path
    ) -> None:
        for component, pod in rendered.workloads():
            if component == "topics":
                continue
            env = rendered.environment(component, _container(pod))
            settings, _ = _settings(component, env, tmp_path)
            assert settings.metrics_host == "0.0.0.0", component


class TestProbes:
    def test_probes_hit_the_real_paths_on_the_metrics_port(
        self, rendered: Rendered, tmp_path: Path
    ) -> None:
        """Liveness on /healthz (the loop answers), readiness on /readyz (the service's
        check), on the port the service really listens on."""
        for component, pod in rendered.workloads():
            if component == "topics":
                continue
            container = _container(pod)
            settings, _ = _settings(component, rendered.environment(component, container), tmp_path)
            port = settings.metrics_port
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"metrics": port}, component
            tls = settings.metrics_tls_certfile is not None
            auth = settings.metrics_auth_username is not None
            for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                probe = container[kind]
                if auth:
                    script = " ".join(probe["exec"]["command"])
                    scheme = "https" if tls else "http"
                    assert f"'{scheme}://127.0.0.1:{port}{path}'" in script, (component, kind)
                    assert "SENSORSTREAM_METRICS_AUTH_PASSWORD_FILE" in script
                else:
                    get = probe["httpGet"]
                    assert get["path"] == path, (component, kind)
                    assert ports[get["port"]] == port, (component, kind)
                    assert get["scheme"] == ("HTTPS" if tls else "HTTP")
                assert probe["timeoutSeconds"] < probe["periodSeconds"]

    def test_exec_probe_script_is_valid_python(self, helm: str, tmp_path: Path) -> None:
        rendered = _render(helm, tmp_path, SCENARIOS["secure"])
        for _, pod in rendered.workloads():
            container = _container(pod)
            for kind in ("livenessProbe", "readinessProbe"):
                if kind in container:
                    command = container[kind]["exec"]["command"]
                    assert command[:2] == ["python", "-c"]
                    compile(command[2], kind, "exec")


class TestAutoscaling:
    def _processor_settings(self, rendered: Rendered, tmp_path: Path) -> Any:
        deployment = rendered.one("Deployment", "processor")
        container = _container(deployment["spec"]["template"]["spec"])
        return _settings("processor", rendered.environment("processor", container), tmp_path)[0]

    def test_keda_scales_on_the_processor_group_lag(
        self, rendered: Rendered, tmp_path: Path
    ) -> None:
        objects = rendered.of_kind("ScaledObject")
        if not rendered.values["processor"]["autoscaling"]["keda"]["enabled"]:
            assert not objects
            return
        [scaled] = objects
        settings = self._processor_settings(rendered, tmp_path)
        deployment = rendered.one("Deployment", "processor")
        assert scaled["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        assert metadata["topic"] == settings.topic
        assert metadata["consumerGroup"] == settings.group_id
        assert metadata["bootstrapServers"] == settings.bootstrap_servers
        assert int(metadata["lagThreshold"]) > 0
        assert metadata["offsetResetPolicy"] == "earliest"
        partitions = rendered.values["topics"]["partitions"]
        assert settings.output_partitions == partitions
        keda = rendered.values["processor"]["autoscaling"]["keda"]
        expected_max = partitions if keda["maxReplicaCount"] is None else keda["maxReplicaCount"]
        assert scaled["spec"]["maxReplicaCount"] == expected_max <= partitions
        assert scaled["spec"]["minReplicaCount"] >= 1
        assert "replicas" not in deployment["spec"]
        if settings.security_protocol != "PLAINTEXT":
            self._check_trigger_authentication(rendered, trigger, settings)

    def _check_trigger_authentication(
        self, rendered: Rendered, trigger: dict[str, Any], settings: Any
    ) -> None:
        auth = rendered.named("TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        secret = rendered.named("Secret", refs["password"]["name"])
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data[refs["sasl"]["key"]] == settings.sasl_mechanism.lower().replace("-", "_")
        assert data[refs["username"]["key"]] == settings.sasl_username
        assert data[refs["password"]["key"]] == PASSWORDS["saslPassword"]
        assert data[refs["tls"]["key"]] == "enable"
        assert {"ca", "cert", "key"} <= set(refs)

    def test_hpa_follows_the_recommended_replicas(self, rendered: Rendered) -> None:
        objects = rendered.of_kind("HorizontalPodAutoscaler")
        if not rendered.values["processor"]["autoscaling"]["hpa"]["enabled"]:
            assert not objects
            return
        [hpa] = objects
        deployment = rendered.one("Deployment", "processor")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        [metric] = hpa["spec"]["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] == "sensorstream:processor_recommended_replicas"
        assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
        assert hpa["spec"]["maxReplicas"] == rendered.values["topics"]["partitions"]
        assert hpa["spec"]["minReplicas"] >= 1
        assert "replicas" not in deployment["spec"]

    def test_hpa_metric_is_a_recording_rule(self) -> None:
        """The default metric is recorded by our Prometheus rules (prometheus-adapter
        serves it as an external metric)."""
        metric = _defaults()["processor"]["autoscaling"]["hpa"]["metricName"]
        records = set()
        for path in sorted((REPO / "deploy" / "prometheus").glob("*.rules.yml")):
            for group in yaml.safe_load(path.read_text()).get("groups", []):
                records |= {rule["record"] for rule in group["rules"] if "record" in rule}
        assert metric in records

    def test_pdb_selects_the_processor_pods_only(self, rendered: Rendered) -> None:
        pdb = rendered.one("PodDisruptionBudget", "processor")
        selector = pdb["spec"]["selector"]["matchLabels"]
        for doc in rendered.of_kind("Deployment"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert _matches(selector, labels) == (_component(doc) == "processor"), _component(doc)
        assert pdb["spec"]["maxUnavailable"] == 1

    @pytest.mark.parametrize(
        ("values", "message"),
        [
            (
                {"processor": {"autoscaling": {"keda": {"enabled": True, "maxReplicaCount": 7}}}},
                "above topics.partitions",
            ),
            (
                {"processor": {"autoscaling": {"keda": {"enabled": True, "minReplicaCount": 0}}}},
                "at least 1",
            ),
            (
                {"processor": {"autoscaling": {"hpa": {"enabled": True, "maxReplicas": 9}}}},
                "above topics.partitions",
            ),
            (
                {
                    "processor": {
                        "autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}
                    }
                },
                "not both",
            ),
        ],
        ids=["keda-max", "keda-min", "hpa-max", "both"],
    )
    def test_bad_autoscaling_fails_to_render(
        self, helm: str, tmp_path: Path, values: dict[str, Any], message: str
    ) -> None:
        result = _template(helm, tmp_path, values)
        assert result.returncode != 0
        assert message in result.stderr, result.stderr


class TestShutdown:
    def test_grace_period_above_shutdown_timeout(self, rendered: Rendered, tmp_path: Path) -> None:
        for component, pod in rendered.workloads():
            if component == "topics":
                continue
            env = rendered.environment(component, _container(pod))
            settings, _ = _settings(component, env, tmp_path)
            timeout = settings.shutdown_timeout
            grace = pod["terminationGracePeriodSeconds"]
            assert grace > timeout, component
            assert grace == math.ceil(timeout) + rendered.values["terminationGraceMargin"]

    def test_own_grace_period_is_kept_if_above(self, helm: str, tmp_path: Path) -> None:
        rendered = _render(helm, tmp_path, {"processor": {"terminationGracePeriodSeconds": 16}})
        pod = rendered.one("Deployment", "processor")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 16

    @pytest.mark.parametrize(
        "values",
        [
            {"processor": {"terminationGracePeriodSeconds": 15}},
            {"shutdownTimeout": 90, "producer": {"terminationGracePeriodSeconds": 60}},
            {
                "processor": {
                    "env": {"SENSORSTREAM_SHUTDOWN_TIMEOUT": "45"},
                    "terminationGracePeriodSeconds": 30,
                }
            },
        ],
        ids=["equal", "below-global", "below-own-env"],
    )
    def test_grace_not_above_timeout_fails(
        self, helm: str, tmp_path: Path, values: dict[str, Any]
    ) -> None:
        result = _template(helm, tmp_path, values)
        assert result.returncode != 0
        assert "must be above its shutdown timeout" in result.stderr, result.stderr


class TestHardening:
    def test_every_container_is_hardened(self, rendered: Rendered) -> None:
        for component, pod in rendered.workloads():
            pod_context = pod["securityContext"]
            assert pod_context["runAsNonRoot"] is True
            assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            for container in pod["containers"] + pod.get("initContainers", []):
                context = container["securityContext"]
                where = f"{component}/{container['name']}"
                assert context["runAsNonRoot"] is True, where
                assert context["runAsUser"] == 10001, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context.get("privileged", False) is False, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
                resources = container["resources"]
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources[part]), (where, part)
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                volumes = {v["name"]: v for v in pod["volumes"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], where

    def test_images_run_as_uid_10001(self) -> None:
        """The uid the chart sets is the images' own user."""
        for dockerfile in set(DOCKERFILES.values()):
            assert "USER 10001:10001" in (REPO / dockerfile).read_text(), dockerfile


class TestSecrets:
    def test_secrets_are_files_never_variables(self, rendered: Rendered, tmp_path: Path) -> None:
        passwords = [p for p in PASSWORDS.values()]
        for doc in rendered.docs:
            if doc["kind"] in ("ConfigMap", "Deployment", "Job"):
                text = yaml.safe_dump(doc)
                for password in passwords:
                    assert password not in text, (doc["kind"], doc["metadata"]["name"])
        for component, pod in rendered.workloads():
            container = _container(pod)
            env = rendered.environment(component, container)
            assert not PLAIN_SECRETS & set(env), component
            for item in container.get("env", []):
                assert "valueFrom" not in item, (component, item["name"])
            settings, files = _settings(component, env, tmp_path)
            mounted = self._mounted_files(rendered, pod, container)
            for key, value in env.items():
                if value.startswith(SECRETS_DIR + "/"):
                    assert value in mounted, (component, key, value)
            self._check_secret_values(rendered, component, env, mounted)
            assert set(files.values()) <= set(mounted)
            del settings

    @staticmethod
    def _mounted_files(
        rendered: Rendered, pod: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, tuple[str, str]]:
        """Each mounted secret file: (Secret name, key)."""
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted: dict[str, tuple[str, str]] = {}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "projected" not in volume:
                continue
            assert mount["readOnly"] is True
            for source in volume["projected"]["sources"]:
                for item in source["secret"]["items"]:
                    path = f"{mount['mountPath']}/{item['path']}"
                    mounted[path] = (source["secret"]["name"], item["key"])
        return mounted

    @staticmethod
    def _check_secret_values(
        rendered: Rendered, component: str, env: dict[str, str], mounted: dict[str, Any]
    ) -> None:
        """A password the chart puts in its Secret is the one the values gave."""
        by_variable = {
            "SENSORSTREAM_SASL_PASSWORD_FILE": "saslPassword",
            "SENSORSTREAM_SSL_KEY_PASSWORD_FILE": "sslKeyPassword",
            "SENSORSTREAM_METRICS_AUTH_PASSWORD_FILE": "metricsAuthPassword",
            "SENSORSTREAM_MQTT_PASSWORD_FILE": "mqttPassword",
            "SENSORSTREAM_DATABASE_PASSWORD_FILE": "databasePassword",
        }
        existing = rendered.values["secrets"]["existingSecret"]
        for variable, value_name in by_variable.items():
            if variable not in env:
                continue
            name, key = mounted[env[variable]]
            if existing:
                assert name == existing
                assert not [d for d in rendered.of_kind("Secret") if d["metadata"]["name"] == name]
                continue
            secret = rendered.named("Secret", name)
            decoded = base64.b64decode(secret["data"][key]).decode()
            assert decoded == rendered.values["secrets"][value_name], (component, variable)

    def test_plain_secret_in_env_fails_to_render(self, helm: str, tmp_path: Path) -> None:
        result = _template(
            helm, tmp_path, {"processor": {"env": {"SENSORSTREAM_SASL_PASSWORD": "x"}}}
        )
        assert result.returncode != 0
        assert "a secret never goes in a variable" in result.stderr, result.stderr

    def test_missing_password_fails_to_render(self, helm: str, tmp_path: Path) -> None:
        result = _template(
            helm,
            tmp_path,
            {"kafka": {"securityProtocol": "SASL_SSL", "saslUsername": "u"}},
        )
        assert result.returncode != 0
        assert "secrets.saslPassword is needed" in result.stderr, result.stderr


class TestMonitoring:
    def test_services_select_their_component(self, rendered: Rendered) -> None:
        for deployment in rendered.of_kind("Deployment"):
            component = _component(deployment)
            service = rendered.one("Service", component)
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert _matches(service["spec"]["selector"], labels)
            selector = service["spec"]["selector"]
            others = [
                _component(d)
                for d in rendered.of_kind("Deployment")
                if d is not deployment
                and _matches(selector, d["spec"]["template"]["metadata"]["labels"])
            ]
            assert not others, component
            [port] = service["spec"]["ports"]
            assert port["targetPort"] == "metrics"

    def test_monitors_scrape_the_metrics_port(self, rendered: Rendered) -> None:
        monitoring = rendered.values["monitoring"]
        monitors = rendered.of_kind("ServiceMonitor") + rendered.of_kind("PodMonitor")
        if not monitoring["enabled"]:
            assert not monitors
            return
        assert {m["kind"] for m in monitors} == {monitoring["kind"]}
        deployments = {_component(d): d for d in rendered.of_kind("Deployment")}
        assert {_component(m) for m in monitors} == set(deployments)
        auth = bool(rendered.values["metricsAuth"]["username"])
        for monitor in monitors:
            component = _component(monitor)
            selector = monitor["spec"]["selector"]["matchLabels"]
            if monitor["kind"] == "ServiceMonitor":
                [endpoint] = monitor["spec"]["endpoints"]
                service = rendered.one("Service", component)
                assert _matches(selector, service["metadata"]["labels"])
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
            else:
                [endpoint] = monitor["spec"]["podMetricsEndpoints"]
                pod = deployments[component]["spec"]["template"]
                assert _matches(selector, pod["metadata"]["labels"])
                assert endpoint["port"] in {p["name"] for p in _container(pod["spec"])["ports"]}
            assert endpoint["path"] == "/metrics"
            assert ("basicAuth" in endpoint) == auth
            # The job label the dashboards and rules use (compose's jobs).
            assert endpoint["relabelings"] == [
                {"targetLabel": "job", "replacement": f"sensorstream-{component}"}
            ]


def _leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


class TestDocs:
    def test_every_value_is_in_the_table(self) -> None:
        """docs/kubernetes.md documents every value (a row may cover a whole map, such as
        processor.resources), and every documented value exists."""
        rows = re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", DOC.read_text(), flags=re.MULTILINE)
        documented = set(rows)
        assert documented, "no values table"
        leaves = list(_leaf_paths(_defaults()))
        undocumented = [
            leaf
            for leaf in leaves
            if not any(leaf == row or leaf.startswith(row + ".") for row in documented)
        ]
        assert not undocumented
        unknown = [
            row
            for row in documented
            if not any(leaf == row or leaf.startswith(row + ".") for leaf in leaves)
        ]
        assert not unknown
