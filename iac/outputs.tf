# What a person needs after `terraform apply`: where the data goes, where images are pushed,
# how to reach the host and its UIs (docs/terraform_guide.md walks through them).

output "bucket_name" {
  description = "S3 bucket for data, MLflow artifacts and rendered reports (HP_BUCKET in .env)."
  value       = aws_s3_bucket.data.bucket
}

output "hp_storage" {
  description = "Value of HP_STORAGE that keeps the pipeline's data in the bucket."
  value       = "s3://${aws_s3_bucket.data.bucket}/healthpredict"
}

output "kms_key_arn" {
  description = "Customer-managed KMS key encrypting the bucket, the ECR repository and the flow logs."
  value       = aws_kms_key.main.arn
}

output "ecr_repository_url" {
  description = "ECR repository of the serving image (CI pushes <url>:<git sha>)."
  value       = aws_ecr_repository.serving.repository_url
}

output "instance_id" {
  description = "EC2 instance ID of the service host."
  value       = aws_instance.host.id
}

output "public_ip" {
  description = "Elastic IP of the service host (stable across stop/start)."
  value       = aws_eip.host.public_ip
}

output "public_dns" {
  description = "Public DNS name of the service host."
  value       = aws_eip.host.public_dns
}

output "ssh_command" {
  description = "SSH to the host as the ubuntu user (use the private key matching ssh_public_key)."
  value       = var.ssh_public_key != "" ? "ssh -i ~/.ssh/id_ed25519 ubuntu@${aws_eip.host.public_ip}" : "no key pair: set ssh_public_key, or enable_ssm and use ssm_command"
}

output "ssh_tunnel_command" {
  description = "SSH with local forwards of every UI, so they are reached at http://localhost:<port> over an encrypted channel."
  value = format(
    "ssh -i ~/.ssh/id_ed25519 %s ubuntu@%s",
    join(" ", [for name, svc in local.service_ports : "-L ${svc.port}:localhost:${svc.port}"]),
    aws_eip.host.public_ip,
  )
}

output "ssm_command" {
  description = "Shell on the host through AWS Systems Manager (when enable_ssm is true)."
  value       = var.enable_ssm ? "aws ssm start-session --region ${var.aws_region} --target ${aws_instance.host.id}" : "SSM disabled: set enable_ssm = true"
}

output "ui_urls" {
  description = "URLs of the UIs, reachable from allowed_cidr once `docker compose up -d` ran on the host."
  value       = { for name, svc in local.service_ports : name => "http://${aws_eip.host.public_ip}:${svc.port}" }
}

output "github_deploy_role_arn" {
  description = "Role assumed by GitHub Actions through OIDC (repository variable AWS_DEPLOY_ROLE_ARN); null when github_repository is empty."
  value       = local.github_enabled ? aws_iam_role.github_deploy[0].arn : null
}
