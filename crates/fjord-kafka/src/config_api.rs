//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: topic configs
//! read from and written to stream policies ([`crate::configs`]); the
//! broker's configs are the node defaults, read-only.

use fjord_broker::BrokerError;
use fjord_core::{Policy, StreamRef};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::configs::{self, Entry};
use crate::names::stream_for_topic;
use crate::server::Session;
use fjord_auth::Action;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Kafka's config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

type Refusal = (ResponseError, String);

fn topic(sh: &Session<'_>, name: &str, action: Action) -> Result<StreamRef, Refusal> {
    let s = stream_for_topic(&sh.tenant, name).ok_or((
        ResponseError::InvalidTopicException,
        format!("{name:?} is not a valid topic name"),
    ))?;
    if !sh.may(action, &s) {
        return Err((
            ResponseError::TopicAuthorizationFailed,
            format!("not authorized to {} {name}", action.as_str()),
        ));
    }
    Ok(s)
}

fn broker_refusal(e: BrokerError) -> Refusal {
    let code = match &e {
        BrokerError::NotFound { .. } => ResponseError::UnknownTopicOrPartition,
        BrokerError::Invalid(_) => ResponseError::InvalidConfig,
        _ => ResponseError::UnknownServerError,
    };
    (code, e.to_string())
}

fn is_this_broker(sh: &Session<'_>, name: &str) -> bool {
    // An empty name asks for the cluster-wide defaults.
    name.is_empty() || name == sh.config.node_id.to_string()
}

fn entries(sh: &Session<'_>, resource_type: i8, name: &str) -> Result<(Vec<Entry>, i8), Refusal> {
    match resource_type {
        TOPIC => {
            let s = topic(sh, name, Action::Describe)?;
            let d = sh.broker.describe_stream(&s).map_err(broker_refusal)?;
            Ok((
                configs::describe(&d.info.policy, &d.effective_policy),
                SOURCE_TOPIC,
            ))
        }
        BROKER if is_this_broker(sh, name) => Ok((
            configs::describe_broker(sh.broker.defaults(), sh.config.node_id),
            SOURCE_STATIC_BROKER,
        )),
        BROKER => Err((
            ResponseError::InvalidRequest,
            format!("no broker {name:?} here"),
        )),
        other => Err((
            ResponseError::InvalidRequest,
            format!("resource type {other} has no configs here (topics: 2, brokers: 4)"),
        )),
    }
}

pub fn describe_configs(sh: &Session<'_>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut r = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        match entries(sh, res.resource_type, &res.resource_name) {
            Err((e, msg)) => {
                out.error_code = e.code();
                out.error_message = Some(StrBytes::from_string(msg));
            }
            Ok((all, explicit_source)) => {
                let wanted = res.configuration_keys.as_ref();
                out.configs = all
                    .into_iter()
                    .filter(|e| wanted.is_none_or(|w| w.iter().any(|k| **k == *e.name)))
                    .map(|e| {
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = StrBytes::from_static_str(e.name);
                        c.value = Some(StrBytes::from_string(e.value));
                        c.read_only = e.read_only;
                        c.config_source = if e.explicit {
                            explicit_source
                        } else if e.read_only && res.resource_type == BROKER {
                            SOURCE_STATIC_BROKER
                        } else {
                            SOURCE_DEFAULT
                        };
                        c.config_type = e.kind;
                        c
                    })
                    .collect();
            }
        }
        r.results.push(out);
    }
    r
}

/// Writes `edit`'s result onto the stream's policy (or only checks it).
fn alter_topic(
    sh: &Session<'_>,
    name: &str,
    validate_only: bool,
    edit: impl FnOnce(&mut Policy, &fjord_core::policy::ResolvedPolicy) -> Result<(), String>,
) -> Result<(), Refusal> {
    let s = topic(sh, name, Action::Admin)?;
    let d = sh.broker.describe_stream(&s).map_err(broker_refusal)?;
    let mut policy = d.info.policy.clone();
    edit(&mut policy, &d.effective_policy).map_err(|m| (ResponseError::InvalidConfig, m))?;
    policy
        .validate()
        .map_err(|m| (ResponseError::InvalidConfig, m))?;
    if !validate_only {
        sh.broker
            .update_stream(&s, None, Some(policy))
            .map_err(broker_refusal)?;
    }
    Ok(())
}

fn refuse_broker(resource_type: i8) -> Refusal {
    if resource_type == BROKER {
        (
            ResponseError::InvalidRequest,
            "broker configs come from the Fjord configuration file".into(),
        )
    } else {
        (
            ResponseError::InvalidRequest,
            format!("resource type {resource_type} cannot be altered here"),
        )
    }
}

/// A resource's error code and message.
fn outcome_fields(outcome: Result<(), Refusal>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((e, msg)) => (e.code(), Some(StrBytes::from_string(msg))),
    }
}

/// AlterConfigs replaces a topic's whole set: every key not given goes
/// back to its inherited value.
pub fn alter_configs(sh: &Session<'_>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut r = AlterConfigsResponse::default();
    for res in req.resources {
        let outcome = if res.resource_type == TOPIC {
            alter_topic(sh, &res.resource_name, req.validate_only, |p, _| {
                for k in configs::TOPIC_KEYS {
                    configs::apply(p, k, None)?;
                }
                for c in &res.configs {
                    configs::apply(p, &c.name, c.value.as_deref())?;
                }
                Ok(())
            })
        } else {
            Err(refuse_broker(res.resource_type))
        };
        let (code, msg) = outcome_fields(outcome);
        let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        out.error_code = code;
        out.error_message = msg;
        r.responses.push(out);
    }
    r
}

pub fn incremental_alter_configs(
    sh: &Session<'_>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut r = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let outcome = if res.resource_type == TOPIC {
            alter_topic(sh, &res.resource_name, req.validate_only, |p, eff| {
                for c in &res.configs {
                    let value = c.value.as_deref();
                    match (c.config_operation, value) {
                        (0, Some(v)) => configs::apply(p, &c.name, Some(v))?,
                        (1, _) => configs::apply(p, &c.name, None)?,
                        (2, Some(v)) => configs::edit_list(p, eff, &c.name, v, true)?,
                        (3, Some(v)) => configs::edit_list(p, eff, &c.name, v, false)?,
                        (op, _) => {
                            return Err(format!(
                                "{}: operation {op} needs a value (0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT)",
                                &*c.name
                            ))
                        }
                    }
                }
                Ok(())
            })
        } else {
            Err(refuse_broker(res.resource_type))
        };
        let (code, msg) = outcome_fields(outcome);
        let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name;
        out.error_code = code;
        out.error_message = msg;
        r.responses.push(out);
    }
    r
}
