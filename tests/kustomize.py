"""Renders a kustomization as `kubectl kustomize` does, for the subset deploy/kubernetes/ uses:
resources (files and directories), labels, strategic-merge patches by path, images, namespace.
Any other field fails the render, so a manifest cannot lean on a feature this ignores."""

from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "labels", "patches", "images", "namespace"}


def _merge(target: Any, patch: Any) -> Any:
    """A strategic merge patch as it applies to these manifests: maps merge key by key; lists
    of named items (containers, env, ports) merge by name; other lists are replaced."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            merged[key] = _merge(target[key], value) if key in target else value
        return merged
    if (
        isinstance(target, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in [*target, *patch])
    ):
        by_name = {item["name"]: item for item in target}
        for item in patch:
            by_name[item["name"]] = _merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return patch


def containers(resource: Resource) -> list[dict[str, Any]]:
    """The containers of a workload's pod template (none for other kinds)."""
    spec = resource.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _load(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Resource]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    assert not unsupported, f"{directory}: the renderer does not apply {sorted(unsupported)}"
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else _load(path)
    for label in kustomization.get("labels", []):
        assert set(label) == {"pairs"}, f"{directory}: labels with {sorted(label)}"
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: a patch with {sorted(entry)}"
        for patch in _load(directory / entry["path"]):
            matches = [
                i
                for i, r in enumerate(resources)
                if (r["kind"], r["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            ]
            assert len(matches) == 1, f"{entry['path']}: patches {len(matches)} resources"
            resources[matches[0]] = _merge(resources[matches[0]], patch)
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in containers(resource):
                if container["image"].split(":")[0] == image["name"]:
                    name = image.get("newName", image["name"])
                    container["image"] = f"{name}:{image['newTag']}"
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] != "Namespace":
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources
