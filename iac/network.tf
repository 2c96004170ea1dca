# A small public network for one host, or an existing subnet (create_vpc = false). The host
# needs a public address because the UIs are reached from var.allowed_cidr; everything else
# reaching it is refused by the security group.

# The subnet goes into a zone that offers var.instance_type (not every zone has every type,
# e.g. us-east-1e), picked from zones a to f by name: an allowlist, so the choice does not move
# when AWS opens a new zone, and accounts whose letters skip "a" (us-west-1) still get one.
data "aws_ec2_instance_type_offerings" "host" {
  location_type = "availability-zone"

  filter {
    name   = "instance-type"
    values = [var.instance_type]
  }

  filter {
    name   = "location"
    values = [for letter in ["a", "b", "c", "d", "e", "f"] : "${var.aws_region}${letter}"]
  }
}

resource "aws_vpc" "main" {
  count = var.create_vpc ? 1 : 0

  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # the host gets a public DNS name for the outputs

  tags = { Name = "${local.name}-vpc" }
}

# Take over the VPC's default security group and leave it without rules, so nothing that
# is launched into the VPC without an explicit group gets any traffic.
resource "aws_default_security_group" "main" {
  count = var.create_vpc ? 1 : 0

  vpc_id = aws_vpc.main[0].id
  tags   = { Name = "${local.name}-default-deny" }
}

resource "aws_internet_gateway" "main" {
  count = var.create_vpc ? 1 : 0

  vpc_id = aws_vpc.main[0].id
  tags   = { Name = "${local.name}-igw" }
}

resource "aws_subnet" "public" {
  count = var.create_vpc ? 1 : 0

  vpc_id            = aws_vpc.main[0].id
  cidr_block        = var.public_subnet_cidr
  availability_zone = var.availability_zone != "" ? var.availability_zone : sort(data.aws_ec2_instance_type_offerings.host.locations)[0]
  # Addresses are given per instance (aws_instance.host), not to anything launched here.
  map_public_ip_on_launch = false

  tags = { Name = "${local.name}-public" }
}

resource "aws_route_table" "public" {
  count = var.create_vpc ? 1 : 0

  vpc_id = aws_vpc.main[0].id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main[0].id
  }

  tags = { Name = "${local.name}-public" }
}

resource "aws_route_table_association" "public" {
  count = var.create_vpc ? 1 : 0

  subnet_id      = aws_subnet.public[0].id
  route_table_id = aws_route_table.public[0].id
}

data "aws_subnet" "existing" {
  count = var.create_vpc ? 0 : 1

  id = var.existing_subnet_id

  lifecycle {
    precondition {
      condition     = var.existing_subnet_id != ""
      error_message = "create_vpc is false: set existing_subnet_id to a public subnet of the VPC to use."
    }
  }
}

locals {
  vpc_id    = var.create_vpc ? aws_vpc.main[0].id : data.aws_subnet.existing[0].vpc_id
  subnet_id = var.create_vpc ? aws_subnet.public[0].id : data.aws_subnet.existing[0].id
}

# --- flow logs --------------------------------------------------------------------------
# Kept for the VPC this configuration creates; an existing VPC's logging belongs to whoever
# owns that VPC.

resource "aws_cloudwatch_log_group" "flow_logs" {
  count = var.create_vpc && var.enable_flow_logs ? 1 : 0

  name              = local.flow_log_group_name
  retention_in_days = var.flow_log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }

    # Only flow logs of this account may use the role (confused-deputy protection).
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  count = var.create_vpc && var.enable_flow_logs ? 1 : 0

  name_prefix        = "${local.name}-flowlogs-"
  description        = "VPC flow logs of ${local.name} into their CloudWatch log group"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
}

data "aws_iam_policy_document" "flow_logs" {
  count = var.create_vpc && var.enable_flow_logs ? 1 : 0

  statement {
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = [
      aws_cloudwatch_log_group.flow_logs[0].arn,
      "${aws_cloudwatch_log_group.flow_logs[0].arn}:*",
    ]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  count = var.create_vpc && var.enable_flow_logs ? 1 : 0

  name   = "write-flow-log-group"
  role   = aws_iam_role.flow_logs[0].id
  policy = data.aws_iam_policy_document.flow_logs[0].json
}

resource "aws_flow_log" "main" {
  count = var.create_vpc && var.enable_flow_logs ? 1 : 0

  vpc_id                   = aws_vpc.main[0].id
  traffic_type             = "ALL"
  log_destination_type     = "cloud-watch-logs"
  log_destination          = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn             = aws_iam_role.flow_logs[0].arn
  max_aggregation_interval = 600 # 10-minute batches: cheaper, and enough for after-the-fact audit
}

# --- security group ---------------------------------------------------------------------

resource "aws_security_group" "host" {
  name_prefix = "${local.name}-host-"
  description = "Health Predict host: SSH and UIs from allowed_cidr only; web egress"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-host" }

  # A replacement group must exist before the old one is detached from the instance.
  lifecycle {
    create_before_destroy = true
  }
}

# Every inbound rule takes its source from var.allowed_cidr, which refuses 0.0.0.0/0
# (variables.tf). The UIs are plain HTTP: docs/terraform_guide.md recommends SSH tunnels.
resource "aws_vpc_security_group_ingress_rule" "host" {
  for_each = local.ingress_ports

  security_group_id = aws_security_group.host.id
  description       = each.value.description
  cidr_ipv4         = var.allowed_cidr
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port

  tags = { Name = "${local.name}-${each.key}" }
}

# Egress is limited to web ports. The host needs them for apt (Ubuntu mirrors over HTTP,
# signed), Docker Hub, ghcr.io, registry.k8s.io, PyPI, git clone, the UCI download, and the
# AWS APIs (S3, ECR, STS). DNS, NTP and the instance metadata service use link-local AWS
# endpoints that security groups do not filter, so they need no rule.
resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.host.id
  description       = "HTTPS to package registries, container registries, GitHub and AWS APIs"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "http" {
  security_group_id = aws_security_group.host.id
  description       = "HTTP to Ubuntu apt mirrors (packages are signature-checked by apt)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}
