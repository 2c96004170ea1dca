# The service host: Docker Compose runs PostgreSQL, MLflow, Airflow and JupyterLab
# (docker-compose.yml), Minikube runs the serving API (k8s/). Bootstrapped once by cloud-init
# from templates/user_data.sh.tftpl.

# The AMI architecture follows the instance type, so a Graviton type (t4g, m7g) gets an
# arm64 image without a second variable that could disagree with the first.
data "aws_ec2_instance_type" "host" {
  instance_type = var.instance_type
}

locals {
  ami_architecture = contains(data.aws_ec2_instance_type.host.supported_architectures, "x86_64") ? "amd64" : "arm64"
}

data "aws_ami" "ubuntu" {
  most_recent = true
  owners      = ["099720109477"] # Canonical: only Canonical-published Ubuntu images qualify

  filter {
    # hvm-ssd (22.04) and hvm-ssd-gp3 (24.04) both match.
    name   = "name"
    values = ["ubuntu/images/hvm-ssd*/ubuntu-*-${var.ubuntu_version}-${local.ami_architecture}-server-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }

  filter {
    name   = "root-device-type"
    values = ["ebs"]
  }
}

resource "aws_key_pair" "host" {
  count = var.ssh_public_key != "" ? 1 : 0

  key_name_prefix = "${local.name}-"
  public_key      = trimspace(var.ssh_public_key)
}

# Allocated apart from the instance so its address can be written into the bootstrap (MLflow
# only answers to host names it was told about) and survives stop/start.
resource "aws_eip" "host" {
  domain = "vpc"
  tags   = { Name = "${local.name}-host" }

  # An EIP in a VPC needs the internet gateway to exist first.
  depends_on = [aws_internet_gateway.main]
}

resource "aws_instance" "host" {
  #checkov:skip=CKV_AWS_88:The host is reached from var.allowed_cidr on SSH and the UIs, which needs a public address; the security group admits that range only.
  ami                    = data.aws_ami.ubuntu.id
  instance_type          = var.instance_type
  subnet_id              = local.subnet_id
  vpc_security_group_ids = [aws_security_group.host.id]
  iam_instance_profile   = aws_iam_instance_profile.host.name
  key_name               = var.ssh_public_key != "" ? aws_key_pair.host[0].key_name : null

  # An address at first boot lets cloud-init download packages before the Elastic IP is
  # associated; the association then replaces it.
  associate_public_ip_address = true

  monitoring    = true # 1-minute CloudWatch metrics: a stuck Airflow or a full disk shows early
  ebs_optimized = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required" # IMDSv2 only: no credential theft through a GET-only SSRF
    # 2 hops: the containers (MLflow, Airflow tasks) sit one network hop behind the host and
    # get the instance-profile credentials through IMDSv2 too.
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    delete_on_termination = true
  }

  # No secrets here: user data is readable by anyone allowed ec2:DescribeInstanceAttribute.
  # The bootstrap generates the passwords of .env on the host itself.
  user_data = templatefile("${path.module}/templates/user_data.sh.tftpl", {
    repo_url              = var.repo_url
    repo_ref              = var.repo_ref
    bucket_name           = aws_s3_bucket.data.bucket
    aws_region            = var.aws_region
    ecr_repository_url    = aws_ecr_repository.serving.repository_url
    public_ip             = aws_eip.host.public_ip
    public_dns            = aws_eip.host.public_dns
    minikube_version      = var.minikube_version
    kubectl_minor_version = var.kubectl_minor_version
  })

  tags = { Name = "${local.name}-host" }

  lifecycle {
    # Cloud-init runs the bootstrap once, at first boot. A newer Ubuntu AMI or an edited
    # template must not silently replace or restart a host holding the databases: replace it
    # on purpose with `terraform apply -replace=aws_instance.host`.
    ignore_changes = [ami, user_data]

    precondition {
      condition     = var.create_vpc || var.existing_subnet_id != ""
      error_message = "create_vpc is false: set existing_subnet_id."
    }
  }
}

resource "aws_eip_association" "host" {
  instance_id   = aws_instance.host.id
  allocation_id = aws_eip.host.id
}
