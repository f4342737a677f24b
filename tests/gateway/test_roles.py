"""The role of every RPC comes from the protos' (neural.v1.required_role) option."""

from __future__ import annotations

import pytest
from service_kit.roles import ROLES, load_all, public_methods, service_roles

pytestmark = pytest.mark.unit

# What the services' hand-written tables said before the option existed (any RPC not listed
# needed "user"): the option must keep every one of them.
OLD_VIEWER = {
    "neural.v1.CompilerService": "Validate GetCompileJob ListCompileJobs WatchCompileJob "
    "ListModels GetModel DownloadModel",
    "neural.v1.TrainerService": "GetTrainingJob ListTrainingJobs WatchTrainingJob ListDatasets "
    "GetDataset GetSearchJob ListSearchJobs WatchSearchJob",
    "neural.v1.TrackerService": "ListExperiments GetExperiment CompareExperiments GetRun "
    "GetMetricHistory WatchRun SearchRuns CompareRuns PlotMetrics ListArtifacts DownloadArtifact",
}
OLD_ADMIN = {"neural.v1.TrainerService": "ListWorkers"}
OLD_USER = {
    "neural.v1.CompilerService": "Compile SubmitCompile CancelCompileJob DeleteModel",
    "neural.v1.TrainerService": "SubmitTraining CancelTrainingJob UploadDataset DeleteDataset "
    "SubmitSearch CancelSearchJob",
    "neural.v1.TrackerService": "CreateExperiment UpdateExperiment DeleteExperiment "
    "RestoreExperiment PurgeExperiment CreateRun UpdateRun SetTags LogParams LogMetrics "
    "StreamMetrics UploadArtifact DeleteArtifact",
}
# RPCs added since: reads, by their verb, are for viewers.
READ_VERBS = (
    "Get",
    "List",
    "Download",
    "Watch",
    "Validate",
    "Search",
    "Compare",
    "Plot",
    "Render",
    "WhoAmI",
)

# RPCs that are public on purpose: the credential travels in the request itself.
DELIBERATELY_PUBLIC = {"/neural.v1.AuthService/IssueToken", "/neural.v1.AuthService/GetJwks"}


def test_every_rpc_declares_a_role_or_is_deliberately_public() -> None:
    services = load_all()
    assert {"neural.v1.CompilerService", "neural.v1.AuthService"} <= set(services)
    public = set().union(*(public_methods(s) for s in services))
    assert public == DELIBERATELY_PUBLIC
    for s in services:
        assert set(service_roles(s).values()) <= set(ROLES)


@pytest.mark.parametrize("service", sorted(OLD_VIEWER))
def test_roles_from_the_protos_equal_the_old_tables(service: str) -> None:
    load_all()
    roles = service_roles(service)
    for role, table in (("viewer", OLD_VIEWER), ("admin", OLD_ADMIN), ("user", OLD_USER)):
        for method in table.get(service, "").split():
            assert roles[f"/{service}/{method}"] == role, method
    assert not public_methods(service)


def test_reads_need_viewer_and_writes_need_more() -> None:
    for service in load_all():
        for path, role in service_roles(service).items():
            method = path.rsplit("/", 1)[-1]
            if method.startswith(READ_VERBS):
                assert role in ("viewer", "admin"), path
            else:
                assert role in ("user", "admin"), path


def test_services_use_the_declared_roles() -> None:
    from services.compiler.service import METHOD_ROLES as compiler
    from services.trainer.service import METHOD_ROLES as trainer

    assert trainer["/neural.v1.TrainerService/ListWorkers"] == "admin"
    assert compiler["/neural.v1.CompilerService/Compile"] == "user"
    assert compiler["/neural.v1.CompilerService/Validate"] == "viewer"


def test_an_unknown_service_is_an_error() -> None:
    with pytest.raises(LookupError):
        service_roles("neural.v1.NoSuchService")
