//! A subscription tree: topic filters by level, so matching a topic costs
//! its depth, not the number of subscriptions. Pure data structure; the
//! session layer keeps one per stream it serves.
//!
//! Follows MQTT's matching rules exactly (`codec::topic::matches` is the
//! reference, and the property test holds the two together): `+` matches one
//! level, `#` the parent and any number of levels below, and topics starting
//! with `$` are not matched by a leading wildcard.

use std::collections::HashMap;

#[derive(Debug)]
struct Node<V> {
    children: HashMap<String, Node<V>>,
    plus: Option<Box<Node<V>>>,
    /// Values of filters ending in `#` at this level.
    hash: Vec<V>,
    /// Values of filters ending exactly here.
    here: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.here.is_empty()
    }
}

#[derive(Debug)]
pub struct SubscriptionTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for SubscriptionTree<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: Clone + PartialEq> SubscriptionTree<V> {
    /// Adds `value` under `filter` (a valid, non-shared filter).
    pub fn insert(&mut self, filter: &str, value: V) {
        let mut node = &mut self.root;
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            match *level {
                "#" if i + 1 == levels.len() => {
                    node.hash.push(value);
                    self.len += 1;
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                l => node = node.children.entry(l.to_string()).or_default(),
            }
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one `value` under `filter`; true if it was there.
    pub fn remove(&mut self, filter: &str, value: &V) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the values of every filter matching `topic` to `out`.
    pub fn matches(&self, topic: &str, out: &mut Vec<V>) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        collect(&self.root, &levels, 0, dollar, out);
    }
}

fn remove_at<V: PartialEq>(node: &mut Node<V>, levels: &[&str], value: &V) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return take(&mut node.here, value);
    };
    if *first == "#" && rest.is_empty() {
        return take(&mut node.hash, value);
    }
    let removed = if *first == "+" {
        match node.plus.as_deref_mut() {
            Some(child) => {
                let r = remove_at(child, rest, value);
                if child.is_empty() {
                    node.plus = None;
                }
                r
            }
            None => false,
        }
    } else {
        match node.children.get_mut(*first) {
            Some(child) => {
                let r = remove_at(child, rest, value);
                if child.is_empty() {
                    node.children.remove(*first);
                }
                r
            }
            None => false,
        }
    };
    removed
}

fn take<V: PartialEq>(list: &mut Vec<V>, value: &V) -> bool {
    match list.iter().position(|v| v == value) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

fn collect<V: Clone>(
    node: &Node<V>,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    out: &mut Vec<V>,
) {
    // Wildcards at the first level do not match `$` topics (MQTT-4.7.2-1).
    let wild_ok = !(dollar && depth == 0);
    if wild_ok {
        // `#` matches the parent level too ("sport/#" matches "sport").
        out.extend(node.hash.iter().cloned());
    }
    let Some((level, rest)) = levels.split_first() else {
        out.extend(node.here.iter().cloned());
        return;
    };
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, depth + 1, dollar, out);
    }
    if wild_ok {
        if let Some(child) = node.plus.as_deref() {
            collect(child, rest, depth + 1, dollar, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::topic;
    use proptest::prelude::*;

    fn filter() -> impl Strategy<Value = String> {
        let levels = proptest::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just(""), Just("$x"), Just("+")],
            1..4,
        );
        prop_oneof![
            1 => Just("#".to_string()),
            9 => (levels, any::<bool>()).prop_map(|(levels, hash)| {
                let mut f = levels.join("/");
                if hash {
                    f.push_str("/#");
                }
                f
            }),
        ]
    }

    fn topic_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just(""), Just("$x"), Just("c")],
            1..5,
        )
        .prop_map(|l| l.join("/"))
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_matcher(filters in proptest::collection::vec(filter(), 0..12), topics in proptest::collection::vec(topic_name(), 1..8), removes in proptest::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let mut tree = SubscriptionTree::default();
            let mut live: Vec<(String, usize)> = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                prop_assume!(topic::validate_filter(f).is_ok());
                tree.insert(f, i);
                live.push((f.clone(), i));
            }
            for r in removes {
                if live.is_empty() { break; }
                let (f, v) = live.remove(r.index(live.len()));
                prop_assert!(tree.remove(&f, &v));
                prop_assert!(!tree.remove(&f, &v));
            }
            prop_assert_eq!(tree.len(), live.len());
            for t in topics {
                let mut got = Vec::new();
                tree.matches(&t, &mut got);
                got.sort();
                let mut want: Vec<usize> = live.iter().filter(|(f, _)| topic::matches(f, &t)).map(|(_, v)| *v).collect();
                want.sort();
                prop_assert_eq!(got, want, "topic {}", t);
            }
        }
    }

    #[test]
    fn removing_the_last_value_prunes_the_tree() {
        let mut t = SubscriptionTree::default();
        t.insert("a/+/c/#", 1);
        t.insert("a/b", 2);
        assert!(t.remove("a/+/c/#", &1));
        assert!(t.remove("a/b", &2));
        assert!(t.is_empty());
        assert!(t.root.is_empty());
    }
}
