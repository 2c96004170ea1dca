# Facts about the account the configuration is applied to, and the names derived from them.
# The resources themselves are split by concern: kms.tf, s3.tf, ecr.tf, iam.tf, network.tf,
# ec2.tf and github_oidc.tf.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  name       = var.project_name
  account_id = data.aws_caller_identity.current.account_id
  # "aws", "aws-cn" or "aws-us-gov": ARNs are built with it so the code is not US-only.
  partition = data.aws_partition.current.partition

  # Account id and region make the default name globally unique without a random suffix,
  # so the same inputs always give the same bucket.
  bucket_name = var.bucket_name != "" ? var.bucket_name : "${var.project_name}-${local.account_id}-${var.aws_region}"

  flow_log_group_name = "/${local.name}/vpc-flow-logs"
  flow_log_group_arn  = "arn:${local.partition}:logs:${var.aws_region}:${local.account_id}:log-group:${local.flow_log_group_name}"

  # The ports the service stack publishes (docker-compose.yml) and which the security group
  # opens to var.allowed_cidr only. One map feeds the rules and the outputs so they cannot
  # disagree; tests/infra/test_compose.py checks it against docker-compose.yml.
  service_ports = {
    airflow    = { port = 8080, description = "Airflow UI and REST API (docker compose service airflow-apiserver)" }
    mlflow     = { port = 5000, description = "MLflow tracking UI and API (docker compose service mlflow)" }
    jupyterlab = { port = 8888, description = "JupyterLab, token required (docker compose service jupyterlab)" }
    api        = { port = 8000, description = "Serving API run by docker compose (profile api)" }
    api_k8s    = { port = var.api_node_port, description = "Serving API in Minikube (NodePort, forwarded on the host)" }
  }
  ingress_ports = merge(
    { ssh = { port = 22, description = "SSH to the ubuntu user" } },
    local.service_ports,
  )
}
