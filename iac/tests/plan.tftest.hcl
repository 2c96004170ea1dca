# `terraform test` (Terraform >= 1.7) plans the configuration against a mocked AWS provider:
# no account, no credentials, no network. It checks what a plan of the real configuration
# would contain, and that the guards (variable validations, preconditions) stop bad inputs.
# tests/infra/test_terraform.py runs it when terraform and the provider are available.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }

  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }

  mock_data "aws_ec2_instance_type" {
    defaults = { supported_architectures = ["i386", "x86_64"] }
  }

  mock_data "aws_ec2_instance_type_offerings" {
    defaults = { locations = ["us-east-1c", "us-east-1b"] }
  }

  mock_data "aws_ami" {
    defaults = { id = "ami-0123456789abcdef0" }
  }

  mock_data "aws_subnet" {
    defaults = { id = "subnet-0123456789abcdef0", vpc_id = "vpc-0123456789abcdef0" }
  }

  # Policy documents are rendered by the provider; a mock renders them as "{}".
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{}" }
  }

  # Computed ARNs that feed arguments the provider validates as ARNs.
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:/healthpredict/vpc-flow-logs" }
  }

  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/healthpredict-role" }
  }

  mock_resource "aws_iam_openid_connect_provider" {
    defaults = { arn = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com" }
  }

  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }

  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::healthpredict-123456789012-us-east-1" }
  }

  mock_resource "aws_ecr_repository" {
    defaults = {
      arn            = "arn:aws:ecr:us-east-1:123456789012:repository/healthpredict-api"
      repository_url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/healthpredict-api"
    }
  }

  mock_resource "aws_eip" {
    defaults = {
      public_ip  = "203.0.113.10"
      public_dns = "ec2-203-0-113-10.compute-1.amazonaws.com"
    }
  }
}

variables {
  allowed_cidr      = "203.0.113.7/32"
  repo_url          = "https://github.com/octo-org/healthpredict.git"
  ssh_public_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKey test@example"
  github_repository = "octo-org/healthpredict"
}

# `apply` against the mock creates nothing real; it makes computed values (the Elastic IP in
# the bootstrap and the outputs) known, so they can be checked.
run "default_stack" {
  command = apply

  assert {
    condition     = aws_instance.host.metadata_options[0].http_tokens == "required"
    error_message = "IMDSv2 must be required."
  }

  assert {
    condition     = aws_instance.host.root_block_device[0].encrypted
    error_message = "The root volume must be encrypted."
  }

  assert {
    condition     = aws_instance.host.ami == "ami-0123456789abcdef0"
    error_message = "The AMI comes from the Canonical data source."
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.host) == 6
    error_message = "SSH, Airflow, MLflow, JupyterLab, API and the API NodePort: six inbound rules."
  }

  assert {
    condition     = alltrue([for rule in aws_vpc_security_group_ingress_rule.host : rule.cidr_ipv4 == "203.0.113.7/32"])
    error_message = "Every inbound rule admits allowed_cidr and nothing else."
  }

  assert {
    condition     = toset([for rule in aws_vpc_security_group_ingress_rule.host : rule.from_port]) == toset([22, 8080, 5000, 8888, 8000, 30080])
    error_message = "The inbound ports are SSH and the UI ports of docker-compose.yml."
  }

  assert {
    condition     = aws_s3_bucket.data.bucket == "healthpredict-123456789012-us-east-1"
    error_message = "The default bucket name is <project>-<account>-<region>."
  }

  assert {
    condition     = aws_subnet.public[0].availability_zone == "us-east-1b"
    error_message = "The subnet goes to the first zone, by name, that offers the instance type."
  }

  assert {
    condition     = length(aws_flow_log.main) == 1 && length(aws_default_security_group.main) == 1
    error_message = "A created VPC gets flow logs and a rule-less default security group."
  }

  assert {
    condition     = length(aws_iam_role.github_deploy) == 1 && length(aws_iam_openid_connect_provider.github) == 1
    error_message = "Setting github_repository creates the OIDC provider and the deploy role."
  }

  assert {
    condition     = length(aws_iam_role_policy_attachment.host_ssm) == 0
    error_message = "SSM is off unless enable_ssm is set."
  }

  assert {
    condition     = strcontains(aws_instance.host.user_data, "REPO_URL='https://github.com/octo-org/healthpredict.git'")
    error_message = "The bootstrap clones repo_url."
  }

  assert {
    condition     = strcontains(aws_instance.host.user_data, "PUBLIC_IP='203.0.113.10'")
    error_message = "The bootstrap knows the Elastic IP (MLflow's allowed hosts)."
  }

  assert {
    condition     = strcontains(output.ssh_tunnel_command, "-L 8888:localhost:8888 ") && strcontains(output.ssh_tunnel_command, "ubuntu@203.0.113.10")
    error_message = "The tunnel command forwards JupyterLab to the host's Elastic IP."
  }

  assert {
    condition     = output.ui_urls["airflow"] == "http://203.0.113.10:8080" && output.ui_urls["mlflow"] == "http://203.0.113.10:5000"
    error_message = "The UI URLs use the Elastic IP and the published ports."
  }
}

run "existing_subnet" {
  command = plan

  variables {
    create_vpc         = false
    existing_subnet_id = "subnet-0123456789abcdef0"
    github_repository  = ""
    enable_ssm         = true
  }

  assert {
    condition     = length(aws_vpc.main) == 0 && length(aws_flow_log.main) == 0
    error_message = "No VPC (and so no flow log) is created for an existing subnet."
  }

  assert {
    condition     = aws_instance.host.subnet_id == "subnet-0123456789abcdef0"
    error_message = "The host goes into the given subnet."
  }

  assert {
    condition     = aws_security_group.host.vpc_id == "vpc-0123456789abcdef0"
    error_message = "The security group belongs to the subnet's VPC."
  }

  assert {
    condition     = length(aws_iam_role.github_deploy) == 0 && length(aws_iam_role_policy_attachment.host_ssm) == 1
    error_message = "No GitHub role without github_repository; SSM attached when enabled."
  }
}

run "existing_subnet_must_be_named" {
  command = plan

  variables {
    create_vpc = false
  }

  expect_failures = [data.aws_subnet.existing]
}

run "open_world_is_refused" {
  command = plan

  variables {
    allowed_cidr = "0.0.0.0/0"
  }

  expect_failures = [var.allowed_cidr]
}
