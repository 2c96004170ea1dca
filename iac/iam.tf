# The host's identity: what the containers on it (MLflow server, Airflow tasks, JupyterLab
# kernels, the ECR credential helper) may do with the instance-profile credentials. Least
# privilege: this bucket, this key and this repository, nothing else.

data "aws_iam_policy_document" "host_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "host" {
  name_prefix        = "${local.name}-host-"
  description        = "Health Predict service host: project bucket and ECR repository only"
  assume_role_policy = data.aws_iam_policy_document.host_assume.json
}

data "aws_iam_policy_document" "host" {
  statement {
    sid = "ListProjectBucket"
    actions = [
      "s3:ListBucket",
      "s3:GetBucketLocation",
      # boto3 lists and aborts multipart uploads when a large artifact upload fails.
      "s3:ListBucketMultipartUploads",
    ]
    resources = [aws_s3_bucket.data.arn]
  }

  statement {
    sid = "ReadWriteProjectObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.data.arn}/*"]
  }

  # Objects are encrypted with the project key (SSE-KMS): reading needs Decrypt, writing
  # needs GenerateDataKey, on this key only.
  statement {
    sid       = "UseProjectKeyForS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
  }

  # GetAuthorizationToken has no resource-level permissions: it returns a registry-wide
  # login token, so IAM only accepts "*" here. What the token can reach is limited by the
  # repository-scoped statement below.
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PushPullServingImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
      "ecr:DescribeImages",
      "ecr:ListImages",
      "ecr:InitiateLayerUpload",
      "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload",
      "ecr:PutImage",
    ]
    resources = [aws_ecr_repository.serving.arn]
  }
}

resource "aws_iam_role_policy" "host" {
  name   = "project-bucket-and-registry"
  role   = aws_iam_role.host.id
  policy = data.aws_iam_policy_document.host.json
}

resource "aws_iam_role_policy_attachment" "host_ssm" {
  count = var.enable_ssm ? 1 : 0

  role       = aws_iam_role.host.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "host" {
  name_prefix = "${local.name}-host-"
  role        = aws_iam_role.host.name
}
