# The bucket behind HP_STORAGE (data splits, loop state, models), MLflow's artifact store
# (mlartifacts/) and the audit trail of notebook runs (rendered/).

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket and log delivery for one project bucket; object-level auditing is better done with CloudTrail data events at account level.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles cost for data that is re-derivable (public UCI data, re-runnable notebooks); versioning covers accidental deletes.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events: the pipeline is driven by Airflow schedules, not S3 notifications.
  bucket = local.bucket_name

  # false by default so a stray `terraform destroy` cannot wipe the models and the audit
  # trail; the teardown in docs/terraform_guide.md sets it explicitly.
  force_destroy = var.force_destroy
}

# ACLs off: access is decided by IAM and the bucket policy alone.
resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket = aws_s3_bucket.data.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Versioning makes an overwritten model or a deleted split recoverable for
# noncurrent_version_retention_days.
resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    # One data key per bucket instead of one KMS call per object: MLflow writes many small
    # artifacts, and per-request KMS charges would dominate the bill.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  # Noncurrent-version rules are only accepted once versioning is on.
  depends_on = [aws_s3_bucket_versioning.data]

  # Rendered run outputs are an audit trail for recent runs; the ones worth keeping longer
  # are copied to rendered/samples/ in git.
  rule {
    id     = "expire-rendered-run-outputs"
    status = "Enabled"

    filter {
      prefix = "rendered/"
    }

    expiration {
      days = var.rendered_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  # Everywhere else versions are an undo window, not an archive.
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {
      prefix = ""
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }

    # Delete markers left once all older versions expired only slow down listings.
    expiration {
      expired_object_delete_marker = true
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  # Health data artefacts never travel in clear text, whoever the caller is.
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyTlsOlderThan12"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.bucket.json

  # S3 checks a new policy against the public access block; applying both at once races.
  depends_on = [aws_s3_bucket_public_access_block.data]
}
