# Pinned so that a fresh `terraform init` months from now resolves the same provider major
# (5.x) this configuration was written and reviewed against; `~> 5.70` still takes bug fixes.
terraform {
  # The language features used need 1.3 (startswith(), preconditions); 1.6 is the oldest
  # release this configuration is documented for (docs/terraform_guide.md). The S3 lock file
  # of backend.tf.example needs 1.10; the example shows the DynamoDB lock for older releases.
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
  }
}
