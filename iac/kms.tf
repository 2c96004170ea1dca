# One customer-managed key encrypts the bucket, the ECR repository and the flow-log group:
# unlike AWS-managed keys it can be rotated, audited and, with `terraform destroy`, scheduled
# for deletion together with everything it protects.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:In a key policy "Resource *" means this key only; the account root statement delegates access control to IAM policies, as AWS requires for a manageable key.
  #checkov:skip=CKV_AWS_111:Same reason: key policies name no other resource than the key itself.
  #checkov:skip=CKV_AWS_356:Same reason: "*" in a key policy is the key the policy is attached to.
  statement {
    sid       = "AccountRootManagesTheKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts the flow-log group with the key; the encryption-context
  # condition limits that to this one log group.
  statement {
    sid = "CloudWatchLogsForFlowLogGroup"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.aws_region}.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = [local.flow_log_group_arn]
    }
  }
}

resource "aws_kms_key" "main" {
  description             = "${local.name}: S3 data and MLflow artifacts, ECR images, VPC flow logs"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.main.key_id
}
