//! MQTT topic names and topic filters (MQTT 5.0 §4.7, 3.1.1 §4.7). In the
//! core because namespace policies hold topic mapping rules; the MQTT codec
//! uses the same rules.

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    /// A topic name holds `+` or `#` (MQTT-3.3.2-2).
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level
    /// (MQTT-4.7.1-1, MQTT-4.7.1-2).
    MisplacedWildcard,
    /// `$share/{group}/{filter}` with an empty or wildcard group, or no
    /// filter (MQTT-4.8.2-1, MQTT-4.8.2-2).
    BadSharedSubscription,
    TooLong,
}

/// Topic names and filters are at most 65,535 bytes (two-byte length).
pub const TOPIC_LEN_MAX: usize = u16::MAX as usize;

pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.len() > TOPIC_LEN_MAX {
        return Err(TopicError::TooLong);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a filter, including a shared one (`$share/group/filter`).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > TOPIC_LEN_MAX {
        return Err(TopicError::TooLong);
    }
    let inner = match shared(filter) {
        Some(Ok((_, f))) => f,
        Some(Err(e)) => return Err(e),
        None => filter,
    };
    let levels: Vec<&str> = inner.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(TopicError::MisplacedWildcard);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}`: `None` if not a shared subscription.
pub fn shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, f)) = rest.split_once('/') else {
        return Some(Err(TopicError::BadSharedSubscription));
    };
    if group.is_empty() || group.contains(['+', '#']) || f.is_empty() {
        return Some(Err(TopicError::BadSharedSubscription));
    }
    Some(Ok((group, f)))
}

/// Whether `filter` (not shared) matches `topic`. Topics starting with `$`
/// are not matched by a filter starting with a wildcard (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters() {
        assert!(validate_name("a/b/c").is_ok());
        assert!(validate_name("").is_ok()); // length rules are the packet's
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert!(validate_filter("#").is_ok());
        assert!(validate_filter("a/+/c/#").is_ok());
        assert!(validate_filter("+").is_ok());
        assert!(validate_filter("/").is_ok());
        assert_eq!(validate_filter("a/#/c"), Err(TopicError::MisplacedWildcard));
        assert_eq!(validate_filter("a#"), Err(TopicError::MisplacedWildcard));
        assert_eq!(validate_filter("a/b+"), Err(TopicError::MisplacedWildcard));
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert!(validate_filter("$share/g/a/+").is_ok());
        assert_eq!(
            validate_filter("$share/g"),
            Err(TopicError::BadSharedSubscription)
        );
        assert_eq!(
            validate_filter("$share//a"),
            Err(TopicError::BadSharedSubscription)
        );
        assert_eq!(
            validate_filter("$share/g+/a"),
            Err(TopicError::BadSharedSubscription)
        );
    }

    /// The examples of MQTT 5.0 §4.7.1.
    #[test]
    fn matching_follows_the_spec_examples() {
        for (f, t, m) in [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/tournament", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/uptime", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/B", false),
        ] {
            assert_eq!(matches(f, t), m, "{f} ~ {t}");
        }
    }
}
