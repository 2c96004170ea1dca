"""Task states of the monitoring DAG's runs, as the REST API reports them, per path taken."""

# Every monitored batch: state, batch, model, monitor, decision, advance.
MONITOR_COMMON = {
    "get_iteration_state": "success",
    "simulate_data_batch": "success",
    "check_for_more_data": "success",
    "get_production_model_uri": "success",
    "run_drift_monitoring": "success",
    "decide_on_retraining": "success",
    "advance_state": "success",
    "end_pipeline": "skipped",
}
NO_RETRAINING_PATH = {
    **MONITOR_COMMON,
    "log_no_retraining": "success",
    "trigger_retraining_dag": "skipped",
    "trigger_deployment_after_retraining": "skipped",
}
