"""The Terraform in iac/: it parses, and it keeps the security properties it promises.

Nothing here talks to AWS. The properties are read from the parsed HCL; the variable
validations are run by a real ``terraform`` (on a copy of variables.tf alone, which needs no
provider and so no network) when it is installed; ``checkov`` scans the whole configuration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IAC = ROOT / "iac"
TEMPLATE = IAC / "templates" / "user_data.sh.tftpl"
TF_FILES = sorted(IAC.glob("*.tf"))
TF_TESTS = sorted((IAC / "tests").glob("*.tftest.hcl"))


def _statements(doc: dict) -> list[dict]:
    return doc.get("statement", [])


def _refs(value) -> str:
    """A value (string or list) as one string, to search for references in it."""
    return json.dumps(value)


# --- parsing -------------------------------------------------------------------------------


def test_the_configuration_is_split_by_concern():
    names = {path.name for path in TF_FILES}
    assert {"versions.tf", "providers.tf", "variables.tf", "outputs.tf"} <= names
    assert {"s3.tf", "ecr.tf", "iam.tf", "network.tf", "ec2.tf"} <= names
    for extra in ("terraform.tfvars.example", "backend.tf.example", "README.md"):
        assert (IAC / extra).is_file(), extra
    assert TEMPLATE.is_file()


@pytest.mark.parametrize("path", TF_FILES + TF_TESTS, ids=lambda p: p.name)
def test_every_tf_file_parses(path, hcl):
    assert hcl(path), f"{path.name} parsed to nothing"


def test_terraform_test_covers_the_guards(hcl):
    (plan_tests,) = TF_TESTS
    runs = {name for block in hcl(plan_tests)["run"] for name in block}
    assert {"default_stack", "existing_subnet", "open_world_is_refused"} <= runs


def test_example_files_parse_and_name_only_declared_variables(iac, hcl):
    tfvars = hcl(IAC / "terraform.tfvars.example")
    unknown = set(tfvars) - set(iac["variable"])
    assert not unknown, f"terraform.tfvars.example sets undeclared variables: {unknown}"
    assert {"allowed_cidr", "repo_url"} <= set(tfvars), "the required variables have examples"
    # The backend example is fully commented out: copying it is a deliberate step.
    assert hcl(IAC / "backend.tf.example") == {}
    text = (IAC / "backend.tf.example").read_text()
    assert 'backend "s3"' in text and "dynamodb_table" in text and "use_lockfile" in text


def test_no_state_or_plan_files_are_kept():
    leftovers = [
        p
        for p in IAC.rglob("*")
        if p.name.endswith((".tfstate", ".tfstate.backup")) or p.name in {"tfplan", ".terraform"}
    ]
    assert not leftovers, leftovers


# --- versions, variables, outputs -----------------------------------------------------------


def test_terraform_and_aws_provider_versions_are_pinned(iac):
    (settings,) = iac["terraform"]
    assert settings["required_version"].startswith(">= 1.")
    (providers,) = settings["required_providers"]
    aws = providers["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> 5\.\d+", aws["version"]), aws["version"]
    (provider,) = iac["provider"]
    assert provider["aws"]["region"] == "${var.aws_region}"


def test_every_variable_has_a_description_and_a_type(iac):
    for name, body in iac["variable"].items():
        assert len(body.get("description", "")) > 15, f"variable {name} needs a description"
        assert "type" in body, f"variable {name} needs a type"


def test_free_form_variables_are_validated(iac):
    # Booleans and the tags map need none; every string or number input a person types does.
    exempt = {"tags", "create_vpc", "enable_ssm", "enable_flow_logs", "force_destroy"}
    exempt |= {"create_github_oidc_provider"}
    for name, body in iac["variable"].items():
        if name in exempt:
            continue
        assert body.get("validation"), f"variable {name} has no validation"


def test_outputs_tell_how_to_reach_everything(iac):
    outputs = iac["output"]
    expected = {"bucket_name", "ecr_repository_url", "public_ip", "public_dns", "ssh_command"}
    expected |= {"ui_urls", "ssh_tunnel_command", "github_deploy_role_arn", "instance_id"}
    assert expected <= set(outputs)
    for name, body in outputs.items():
        assert body.get("description"), f"output {name} needs a description"
    assert "local.service_ports" in outputs["ui_urls"]["value"]


# --- S3 --------------------------------------------------------------------------------------


def test_bucket_blocks_every_kind_of_public_access(iac):
    (block,) = iac["resource"]["aws_s3_bucket_public_access_block"].values()
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[flag] is True, flag
    (ownership,) = iac["resource"]["aws_s3_bucket_ownership_controls"].values()
    assert ownership["rule"][0]["object_ownership"] == "BucketOwnerEnforced"


def test_bucket_is_versioned(iac):
    (versioning,) = iac["resource"]["aws_s3_bucket_versioning"].values()
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"


def test_bucket_is_encrypted_with_the_customer_managed_key(iac):
    (sse,) = iac["resource"]["aws_s3_bucket_server_side_encryption_configuration"].values()
    rule = sse["rule"][0]
    default = rule["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == "${aws_kms_key.main.arn}"
    assert rule["bucket_key_enabled"] is True
    key = iac["resource"]["aws_kms_key"]["main"]
    assert key["enable_key_rotation"] is True
    assert "policy" in key


def test_bucket_policy_denies_requests_without_tls(iac):
    policy = iac["data"]["aws_iam_policy_document"]["bucket"]
    deny_plain = [
        s
        for s in _statements(policy)
        if s.get("effect") == "Deny"
        and any(
            c["test"] == "Bool"
            and c["variable"] == "aws:SecureTransport"
            and c["values"] == ["false"]
            for c in s.get("condition", [])
        )
    ]
    assert deny_plain, "no Deny on aws:SecureTransport = false"
    (statement,) = deny_plain
    assert statement["actions"] == ["s3:*"]
    assert set(statement["resources"]) == {
        "${aws_s3_bucket.data.arn}",
        "${aws_s3_bucket.data.arn}/*",
    }
    (attached,) = iac["resource"]["aws_s3_bucket_policy"].values()
    assert attached["policy"] == "${data.aws_iam_policy_document.bucket.json}"


def test_lifecycle_expires_run_outputs_and_old_versions(iac):
    (lifecycle,) = iac["resource"]["aws_s3_bucket_lifecycle_configuration"].values()
    rules = {rule["id"]: rule for rule in lifecycle["rule"]}
    for rule in rules.values():
        assert rule["status"] == "Enabled"
        assert rule["abort_incomplete_multipart_upload"], rule["id"]
        assert rule["noncurrent_version_expiration"], rule["id"]
    rendered = [r for r in rules.values() if r["filter"][0].get("prefix") == "rendered/"]
    assert len(rendered) == 1, "one rule expires rendered/"
    assert rendered[0]["expiration"][0]["days"] == "${var.rendered_retention_days}"


# --- ECR -------------------------------------------------------------------------------------


def test_ecr_scans_on_push_keeps_tags_immutable_and_encrypts(iac):
    repo = iac["resource"]["aws_ecr_repository"]["serving"]
    assert repo["image_tag_mutability"] == "IMMUTABLE"
    assert repo["image_scanning_configuration"][0]["scan_on_push"] is True
    encryption = repo["encryption_configuration"][0]
    assert encryption["encryption_type"] == "KMS"
    assert encryption["kms_key"] == "${aws_kms_key.main.arn}"


def test_ecr_lifecycle_keeps_the_last_n_images(iac):
    (policy,) = iac["resource"]["aws_ecr_lifecycle_policy"].values()
    text = policy["policy"]
    assert "imageCountMoreThan" in text and "var.ecr_keep_images" in text
    assert policy["repository"] == "${aws_ecr_repository.serving.name}"


# --- EC2 -------------------------------------------------------------------------------------


def test_host_requires_imdsv2_and_encrypts_its_root_volume(iac):
    host = iac["resource"]["aws_instance"]["host"]
    metadata = host["metadata_options"][0]
    assert metadata["http_tokens"] == "required"
    assert metadata["http_endpoint"] == "enabled"
    # Containers reach IMDSv2 through one extra hop; more would expose it further.
    assert metadata["http_put_response_hop_limit"] == 2
    root = host["root_block_device"][0]
    assert root["encrypted"] is True
    assert root["volume_type"] == "gp3"
    assert host["monitoring"] is True
    assert host["ebs_optimized"] is True
    assert host["instance_type"] == "${var.instance_type}"
    assert host["iam_instance_profile"] == "${aws_iam_instance_profile.host.name}"


def test_host_ami_is_canonical_ubuntu_from_a_data_source(iac):
    host = iac["resource"]["aws_instance"]["host"]
    assert host["ami"] == "${data.aws_ami.ubuntu.id}"
    ami = iac["data"]["aws_ami"]["ubuntu"]
    assert ami["owners"] == ["099720109477"]
    assert ami["most_recent"] is True
    (name_filter,) = [f for f in ami["filter"] if f["name"] == "name"]
    assert "var.ubuntu_version" in name_filter["values"][0]
    assert name_filter["values"][0].startswith("ubuntu/images/")


def _template_vars_passed(iac) -> set[str]:
    user_data = iac["resource"]["aws_instance"]["host"]["user_data"]
    assert "templates/user_data.sh.tftpl" in user_data
    body = user_data[user_data.index("{", user_data.index("tftpl")) :]
    return set(re.findall(r"(\w+)\s*=", body))


def _template_vars_used() -> set[str]:
    text = TEMPLATE.read_text().replace("$${", "")
    return set(re.findall(r"\$\{(\w+)\}", text))


def test_user_data_template_gets_exactly_the_values_it_uses(iac):
    assert _template_vars_passed(iac) == _template_vars_used()


SAMPLE_VALUES = {
    "repo_url": "https://github.com/octo-org/healthpredict.git",
    "repo_ref": "main",
    "bucket_name": "healthpredict-123456789012-us-east-1",
    "aws_region": "us-east-1",
    "ecr_repository_url": "123456789012.dkr.ecr.us-east-1.amazonaws.com/healthpredict-api",
    "public_ip": "203.0.113.10",
    "public_dns": "ec2-203-0-113-10.compute-1.amazonaws.com",
    "minikube_version": "v1.36.0",
    "kubectl_minor_version": "v1.33",
}


def _render_template(values: dict[str, str]) -> str:
    """Terraform's template rules for the subset the bootstrap uses: ${name}, $${ and %%{."""
    text = TEMPLATE.read_text()
    assert "%{" not in text.replace("%%{", ""), "no template directives expected"
    rendered = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    return rendered.replace("$${", "${").replace("%%{", "%{")


@pytest.fixture(scope="module")
def rendered_user_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user-data") / "user_data.sh"
    path.write_text(_render_template(SAMPLE_VALUES))
    return path


def test_user_data_installs_the_stack_and_clones_the_project(rendered_user_data):
    script = rendered_user_data.read_text()
    assert script.startswith("#!/usr/bin/env bash\n")
    for needle in (
        "docker-ce",
        "docker-compose-plugin",
        "kubectl",
        "minikube-linux-",
        "sha256sum --check",
        "git clone",
        SAMPLE_VALUES["repo_url"],
        'checkout --quiet "$REPO_REF"',
        "usermod -aG docker",
    ):
        assert needle in script, needle
    # No credential is ever written by the bootstrap; secrets are generated on the host.
    assert "aws_secret_access_key" not in script.lower()
    assert "openssl rand" in script


def test_user_data_is_valid_bash(rendered_user_data):
    result = subprocess.run(
        ["bash", "-n", str(rendered_user_data)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_user_data_passes_shellcheck(rendered_user_data, tool, checker_env):
    shellcheck = tool("shellcheck")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", str(rendered_user_data)],
        capture_output=True,
        text=True,
        env=checker_env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_renders_the_template_like_the_tests_do(tool, checker_env, tmp_path):
    """The tests' own renderer must agree with Terraform's templatefile()."""
    terraform = tool("terraform")
    args = ", ".join(f'{key} = "{value}"' for key, value in SAMPLE_VALUES.items())
    result = subprocess.run(
        [terraform, "console"],
        input=f'templatefile("{TEMPLATE}", {{ {args} }})\n',
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=checker_env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The console prints a multi-line string as a <<EOT heredoc
    out = result.stdout
    assert out.startswith("<<EOT\n"), out[:200]
    body = out[len("<<EOT\n") :].rstrip("\n")
    assert body.endswith("EOT")
    # (and ends it with one more newline than the string has)
    assert body[: -len("EOT")].rstrip("\n") == _render_template(SAMPLE_VALUES).rstrip("\n")


# --- network ---------------------------------------------------------------------------------


def test_every_ingress_rule_is_limited_to_allowed_cidr(iac):
    resources = iac["resource"]
    rules = resources["aws_vpc_security_group_ingress_rule"]
    assert rules, "ingress rules expected"
    for name, rule in rules.items():
        assert rule["cidr_ipv4"] == "${var.allowed_cidr}", name
        assert "cidr_ipv6" not in rule and "prefix_list_id" not in rule, name
        assert rule["ip_protocol"] == "tcp", name
    for name, group in resources["aws_security_group"].items():
        assert "ingress" not in group, f"inline ingress in aws_security_group.{name}"
    for name, rule in resources.get("aws_security_group_rule", {}).items():
        assert rule.get("type") != "ingress", f"aws_security_group_rule.{name}"


def _strings(value, path=()):
    """Every string in a parsed block, with the path of keys leading to it."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, path)


def test_the_open_world_appears_only_in_egress_and_the_default_route(iac):
    allowed = {
        ("aws_vpc_security_group_egress_rule", "cidr_ipv4"),
        ("aws_route_table", "route", "cidr_block"),
    }
    for type_, named in iac["resource"].items():
        for name, body in named.items():
            for path, value in _strings(body):
                if "0.0.0.0/0" in value:
                    assert (type_, *path) in allowed, f"{type_}.{name}: {path} = {value}"


def test_security_group_opens_ssh_and_the_ui_ports(iac):
    ingress = iac["locals"]["ingress_ports"]
    assert "local.service_ports" in ingress
    rule = iac["resource"]["aws_vpc_security_group_ingress_rule"]["host"]
    assert rule["for_each"] == "${local.ingress_ports}"
    ports = {svc["port"] for svc in iac["locals"]["service_ports"].values()}
    assert {8080, 5000, 8888, 8000, "${var.api_node_port}"} <= ports
    assert "ssh = {port = 22" in ingress


def test_egress_is_limited_to_web_ports_and_documented(iac):
    egress = iac["resource"]["aws_vpc_security_group_egress_rule"]
    assert {(r["from_port"], r["to_port"]) for r in egress.values()} == {(443, 443), (80, 80)}
    for name, rule in egress.items():
        assert len(rule["description"]) > 20, name


def test_vpc_is_optional_and_an_existing_subnet_can_be_used(iac):
    assert iac["variable"]["create_vpc"]["default"] is True
    for type_ in ("aws_vpc", "aws_subnet", "aws_internet_gateway", "aws_route_table"):
        for name, body in iac["resource"][type_].items():
            assert body["count"] == "${var.create_vpc ? 1 : 0}", f"{type_}.{name}"
    existing = iac["data"]["aws_subnet"]["existing"]
    assert existing["id"] == "${var.existing_subnet_id}"
    subnet = iac["resource"]["aws_subnet"]["public"]
    assert subnet["map_public_ip_on_launch"] is False


def test_default_security_group_is_left_without_rules(iac):
    (default_sg,) = iac["resource"]["aws_default_security_group"].values()
    assert "ingress" not in default_sg and "egress" not in default_sg


def test_vpc_flow_logs_go_to_an_encrypted_log_group(iac):
    (flow_log,) = iac["resource"]["aws_flow_log"].values()
    assert flow_log["traffic_type"] == "ALL"
    assert flow_log["vpc_id"] == "${aws_vpc.main[0].id}"
    (group,) = iac["resource"]["aws_cloudwatch_log_group"].values()
    assert group["kms_key_id"] == "${aws_kms_key.main.arn}"


# --- IAM -------------------------------------------------------------------------------------


def test_no_policy_grants_star_resources_except_the_ecr_login(iac):
    for name, doc in iac["data"]["aws_iam_policy_document"].items():
        if name == "kms":
            continue  # a key policy's "*" is the key itself (checkov skips say so)
        for statement in _statements(doc):
            if statement.get("effect", "Allow") != "Allow" or "resources" not in statement:
                continue
            if "*" in statement["resources"]:
                assert statement["actions"] == ["ecr:GetAuthorizationToken"], (name, statement)
            for action in statement["actions"]:
                assert not action.endswith(":*") and action != "*", (name, action)


def test_host_role_reaches_only_this_bucket_key_and_repository(iac):
    doc = iac["data"]["aws_iam_policy_document"]["host"]
    by_sid = {s["sid"]: s for s in _statements(doc)}
    assert by_sid["ListProjectBucket"]["resources"] == ["${aws_s3_bucket.data.arn}"]
    assert "s3:ListBucket" in by_sid["ListProjectBucket"]["actions"]
    objects = by_sid["ReadWriteProjectObjects"]
    assert objects["resources"] == ["${aws_s3_bucket.data.arn}/*"]
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(objects["actions"])
    assert by_sid["UseProjectKeyForS3"]["resources"] == ["${aws_kms_key.main.arn}"]
    assert by_sid["PushPullServingImage"]["resources"] == ["${aws_ecr_repository.serving.arn}"]
    assert {"ecr:PutImage", "ecr:BatchGetImage"} <= set(by_sid["PushPullServingImage"]["actions"])
    assert by_sid["EcrLogin"]["resources"] == ["*"]
    # The comment explaining the "*" stays next to it.
    assert "no resource-level permissions" in (IAC / "iam.tf").read_text()


def test_ssm_access_is_optional(iac):
    attachment = iac["resource"]["aws_iam_role_policy_attachment"]["host_ssm"]
    assert attachment["count"] == "${var.enable_ssm ? 1 : 0}"
    assert attachment["policy_arn"].endswith("policy/AmazonSSMManagedInstanceCore")
    assert iac["variable"]["enable_ssm"]["default"] is False


def test_github_deploy_role_trusts_only_the_repository_branch(iac):
    trust = iac["data"]["aws_iam_policy_document"]["github_assume"]
    (statement,) = _statements(trust)
    assert statement["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    conditions = {c["variable"]: c for c in statement["condition"]}
    aud = conditions["${local.github_oidc_issuer}:aud"]
    assert aud["test"] == "StringEquals" and aud["values"] == ["sts.amazonaws.com"]
    sub = conditions["${local.github_oidc_issuer}:sub"]
    assert sub["test"] == "StringEquals", "no wildcard match on the subject"
    assert sub["values"] == [
        "repo:${var.github_repository}:ref:refs/heads/${var.github_deploy_branch}"
    ]
    push = iac["data"]["aws_iam_policy_document"]["github_deploy"]
    for s in _statements(push):
        if s["sid"] != "EcrLogin":
            assert s["resources"] == ["${aws_ecr_repository.serving.arn}"]
    provider = iac["resource"]["aws_iam_openid_connect_provider"]["github"]
    assert provider["client_id_list"] == ["sts.amazonaws.com"]


# --- variable validations, run by Terraform itself ----------------------------------------


@pytest.fixture(scope="module")
def variables_only(tool, checker_env, tmp_path_factory):
    """A root module holding only variables.tf: `terraform plan` then checks the inputs and
    nothing else, with no provider to download."""
    terraform = tool("terraform")
    workdir = tmp_path_factory.mktemp("tf-variables")
    shutil.copy(IAC / "variables.tf", workdir / "variables.tf")
    init = subprocess.run(
        [terraform, "init", "-input=false", "-no-color", "-backend=false"],
        cwd=workdir,
        env=checker_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr

    def plan(**values: str) -> subprocess.CompletedProcess:
        inputs = {"allowed_cidr": "203.0.113.7/32", "repo_url": SAMPLE_VALUES["repo_url"]}
        inputs.update(values)
        args = [f"-var={key}={value}" for key, value in inputs.items()]
        return subprocess.run(
            [terraform, "plan", "-input=false", "-no-color", "-lock=false", *args],
            cwd=workdir,
            env=checker_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return plan


def test_allowed_cidr_has_no_default_and_a_validation_against_wide_ranges(iac):
    """Read from the HCL, so this holds even where no terraform binary runs the rule."""
    variable = iac["variable"]["allowed_cidr"]
    assert "default" not in variable, "the person applying must choose the range"
    (validation,) = variable["validation"]
    condition = validation["condition"]
    assert "cidrnetmask(var.allowed_cidr)" in condition  # malformed or IPv6 values fail
    assert ">= 8" in condition  # 0.0.0.0/0 (and anything wider than a /8) fails
    assert "0.0.0.0/0" in validation["error_message"]


@pytest.mark.parametrize(
    "cidr", ["0.0.0.0/0", "0.0.0.0/1", "10.0.0.0/7", "203.0.113.7/24", "1.2.3.4", "garbage", "::/0"]
)
def test_allowed_cidr_rejects_the_open_world_and_malformed_ranges(variables_only, cidr):
    result = variables_only(allowed_cidr=cidr)
    assert result.returncode != 0
    assert 'variable "allowed_cidr"' in result.stderr, result.stderr


@pytest.mark.parametrize("cidr", ["203.0.113.7/32", "198.51.100.0/24", "10.0.0.0/8"])
def test_allowed_cidr_accepts_specific_ranges(variables_only, cidr):
    result = variables_only(allowed_cidr=cidr)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ssh_public_key", "/home/me/.ssh/id_ed25519"),
        ("ssh_public_key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("instance_type", "large"),
        ("repo_url", "git@github.com:o/r.git"),
        ("repo_url", "https://example.org/r.git'; rm -rf /"),
        ("repo_ref", "--upload-pack=x"),
        ("github_repository", "octo-org/*"),
        ("ubuntu_version", "20.04"),
        ("api_node_port", "8000"),
        ("existing_subnet_id", "vpc-123"),
        ("root_volume_size_gb", "8"),
        ("aws_region", "europe"),
    ],
)
def test_other_inputs_are_validated(variables_only, variable, value):
    result = variables_only(**{variable: value})
    assert result.returncode != 0
    assert f'variable "{variable}"' in result.stderr, result.stderr


def test_the_example_inputs_are_all_accepted(variables_only, hcl):
    tfvars = hcl(IAC / "terraform.tfvars.example")
    scalars = {k: v for k, v in tfvars.items() if isinstance(v, str | int | bool)}
    values = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in scalars.items()}
    result = variables_only(**values)
    assert result.returncode == 0, result.stderr


def _provider_mirror() -> Path | None:
    """A local copy of the hashicorp/aws provider (a Terraform filesystem mirror), if any.

    `terraform init` normally downloads the provider from the Terraform registry, which these
    machines cannot reach; a mirror (HP_TF_PLUGIN_MIRROR, or /opt/tf-plugins) replaces it.
    """
    for candidate in (os.environ.get("HP_TF_PLUGIN_MIRROR"), "/opt/tf-plugins"):
        if candidate and any(Path(candidate).glob("registry.terraform.io/hashicorp/aws/5.*")):
            return Path(candidate)
    return None


def test_terraform_test_plans_the_stack_against_a_mocked_aws(tool, checker_env, tmp_path):
    """Runs iac/tests/plan.tftest.hcl: the real configuration, validated against the AWS
    provider's schema and planned (and applied to a mock provider, so nothing real) with the
    default inputs and with an existing subnet, plus the guards refusing bad inputs."""
    terraform = tool("terraform")
    mirror = _provider_mirror()
    if mirror is None:
        pytest.skip("no local hashicorp/aws provider mirror (set HP_TF_PLUGIN_MIRROR)")
    workdir = tmp_path / "iac"
    shutil.copytree(IAC, workdir, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    cli_config = tmp_path / "terraformrc"
    # Only the mirror: nothing is ever fetched from the network.
    cli_config.write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n'
    )
    env = {**checker_env, "TF_CLI_CONFIG_FILE": str(cli_config)}
    for command in (["init", "-backend=false"], ["test"]):
        result = subprocess.run(
            [terraform, *command, "-no-color"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert re.search(r"Success! \d+ passed, 0 failed", result.stdout), result.stdout[-2000:]


def test_terraform_files_are_formatted(tool, checker_env):
    terraform = tool("terraform")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-diff", "-recursive", "-no-color", str(IAC)],
        env=checker_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- checkov ---------------------------------------------------------------------------------


def _json_documents(text: str) -> list:
    """checkov prints one JSON document per scanned directory, one after another."""
    decoder = json.JSONDecoder()
    documents, index = [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.extend(document if isinstance(document, list) else [document])
    return documents


@pytest.mark.faults
def test_checkov_finds_nothing_unexplained(tool, checker_env):
    checkov = tool("checkov")
    result = subprocess.run(
        [
            checkov,
            "--directory",
            "iac",
            "--directory",
            "deploy",
            "--framework",
            "terraform",
            "dockerfile",
            "--skip-download",
            "--output",
            "json",
        ],
        cwd=ROOT,
        env=checker_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    reports = {}
    for report in _json_documents(result.stdout):
        reports.setdefault(report["check_type"], report)
    assert {"terraform", "dockerfile"} <= set(reports), result.stdout[-2000:] + result.stderr
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for report in reports.values()
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stderr[-2000:]
    terraform = reports["terraform"]["summary"]
    assert terraform["resource_count"] >= 30 and terraform["passed"] >= 100, terraform
    assert terraform["parsing_errors"] == 0


@pytest.mark.faults
def test_every_checkov_skip_gives_a_reason():
    text = "".join(path.read_text() for path in TF_FILES)
    skips = re.findall(r"#checkov:skip=([A-Z0-9_]+)(?::(.*))?", text)
    assert skips, "skips expected (public IP, S3 logging/replication, key policy)"
    for check_id, reason in skips:
        assert reason and len(reason.strip()) > 30, f"{check_id} is skipped without a reason"
