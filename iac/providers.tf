provider "aws" {
  region = var.aws_region

  # Every resource carries the same tags, so the bill and the console can be filtered by
  # project, and anything left behind after `terraform destroy` is easy to find.
  default_tags {
    tags = merge(var.tags, {
      Project   = var.project_name
      ManagedBy = "terraform"
    })
  }
}
