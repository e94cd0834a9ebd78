use proptest::prelude::*;

use super::*;

fn state_with(grants: &[(&str, NameRange, Permission)]) -> AuthState {
    let mut s = AuthState::default();
    s.apply(&AuthCommand::UserAdd { name: "alice".into(), password_hash: Some("h".into()) }).unwrap();
    for (role, range, permission) in grants {
        if !s.roles.contains_key(*role) {
            s.apply(&AuthCommand::RoleAdd { name: role.to_string() }).unwrap();
            s.apply(&AuthCommand::UserGrant { user: "alice".into(), role: role.to_string() }).unwrap();
        }
        let grant = AuthCommand::RoleGrant { role: role.to_string(), range: range.clone(), permission: *permission };
        s.apply(&grant).unwrap();
    }
    s
}

#[test]
fn a_prefix_grant_covers_its_names_at_its_level_and_below() {
    let s = state_with(&[("jobs", NameRange::prefix("jobs/"), Permission::Lock)]);
    let name = |n: &str| NameRange::name(n);
    assert!(s.allows("alice", Permission::Lock, &name("jobs/a")));
    assert!(s.allows("alice", Permission::Read, &name("jobs/a")), "lock includes read");
    assert!(!s.allows("alice", Permission::Write, &name("jobs/a")), "lock is not write");
    assert!(!s.allows("alice", Permission::Lock, &name("jobs")), "the prefix itself is not under it");
    assert!(!s.allows("alice", Permission::Lock, &name("jobz")));
    assert!(s.allows("alice", Permission::Read, &NameRange::prefix("jobs/x")), "a narrower prefix");
    assert!(!s.allows("alice", Permission::Read, &NameRange::prefix("job")), "a wider prefix");
    assert!(!s.allows("bob", Permission::Read, &name("jobs/a")), "an unknown user may do nothing");
}

#[test]
fn adjacent_grants_of_several_roles_cover_a_range_together() {
    let s = state_with(&[
        ("a", NameRange { start: b"a".to_vec(), end: b"m".to_vec() }, Permission::Read),
        ("b", NameRange { start: b"m".to_vec(), end: b"t".to_vec() }, Permission::Write),
    ]);
    let range = |a: &str, b: &str| NameRange { start: a.as_bytes().to_vec(), end: b.as_bytes().to_vec() };
    assert!(s.allows("alice", Permission::Read, &range("c", "s")));
    assert!(!s.allows("alice", Permission::Write, &range("c", "s")), "write on half of it only");
    assert!(s.allows("alice", Permission::Write, &range("n", "s")));
    assert!(!s.allows("alice", Permission::Read, &range("c", "u")), "past the last grant");
    assert!(!s.allows("alice", Permission::Read, &range("c", "")), "an unbounded range");
}

#[test]
fn the_root_role_allows_everything_and_the_empty_prefix_every_name() {
    let mut s = state_with(&[("all", NameRange::prefix(""), Permission::Read)]);
    assert!(s.allows("alice", Permission::Read, &NameRange::prefix("")));
    assert!(!s.allows("alice", Permission::Lock, &NameRange::name("x")));
    s.apply(&AuthCommand::UserGrant { user: "alice".into(), role: ROOT_ROLE.into() }).unwrap();
    assert!(s.allows("alice", Permission::Admin, &NameRange::prefix("")));
}

#[test]
fn authentication_needs_root_and_never_locks_everyone_out() {
    let mut s = AuthState::default();
    let key = vec![7; 32];
    assert_eq!(s.apply(&AuthCommand::Enable { token_key: key.clone() }), Err(AuthError::NoRoot));
    s.apply(&AuthCommand::UserAdd { name: "root".into(), password_hash: Some("h".into()) }).unwrap();
    assert_eq!(s.apply(&AuthCommand::Enable { token_key: key.clone() }), Err(AuthError::NoRoot));
    s.apply(&AuthCommand::UserGrant { user: "root".into(), role: "root".into() }).unwrap();
    assert_eq!(
        s.apply(&AuthCommand::Enable { token_key: vec![1; 4] }).unwrap_err().to_string(),
        "a token key takes at least 16 bytes"
    );
    s.apply(&AuthCommand::Enable { token_key: key }).unwrap();
    assert!(s.enabled);
    let before = s.clone();
    assert!(matches!(s.apply(&AuthCommand::UserRemove { name: "root".into() }), Err(AuthError::WouldLockOut(_))));
    let revoke = AuthCommand::UserRevoke { user: "root".into(), role: "root".into() };
    assert!(matches!(s.apply(&revoke), Err(AuthError::WouldLockOut(_))));
    assert!(matches!(s.apply(&AuthCommand::RoleRemove { name: "root".into() }), Err(AuthError::Invalid(_))));
    assert_eq!(s, before, "a refusal changes nothing");
    s.apply(&AuthCommand::Disable).unwrap();
    s.apply(&AuthCommand::UserRemove { name: "root".into() }).unwrap();
}

#[test]
fn changes_that_must_end_tokens_bump_the_generation() {
    let mut s = state_with(&[("r", NameRange::prefix("x"), Permission::Read)]);
    let generation = |s: &AuthState| s.users["alice"].generation;
    let g0 = generation(&s);
    s.apply(&AuthCommand::UserPasswd { name: "alice".into(), password_hash: Some("h2".into()) }).unwrap();
    assert_eq!(generation(&s), g0 + 1);
    s.apply(&AuthCommand::UserRevoke { user: "alice".into(), role: "r".into() }).unwrap();
    assert_eq!(generation(&s), g0 + 2);
    s.apply(&AuthCommand::UserGrant { user: "alice".into(), role: "r".into() }).unwrap();
    s.apply(&AuthCommand::RoleRemove { name: "r".into() }).unwrap();
    assert_eq!(generation(&s), g0 + 3, "losing a role by its removal too");
    assert!(s.users["alice"].roles.is_empty());
}

#[test]
fn a_user_added_again_never_has_an_earlier_generation() {
    let mut s = state_with(&[]);
    let g = s.users["alice"].generation;
    s.apply(&AuthCommand::UserRemove { name: "alice".into() }).unwrap();
    s.apply(&AuthCommand::UserAdd { name: "alice".into(), password_hash: Some("h".into()) }).unwrap();
    assert!(s.users["alice"].generation > g, "a token of the removed alice would work again");
}

#[test]
fn root_keeps_a_password_while_authentication_is_on() {
    let mut s = AuthState::default();
    s.apply(&AuthCommand::UserAdd { name: "root".into(), password_hash: Some("h".into()) }).unwrap();
    s.apply(&AuthCommand::UserGrant { user: "root".into(), role: "root".into() }).unwrap();
    s.apply(&AuthCommand::Enable { token_key: vec![1; 32] }).unwrap();
    let clear = AuthCommand::UserPasswd { name: "root".into(), password_hash: None };
    assert!(matches!(s.apply(&clear), Err(AuthError::WouldLockOut(_))));
}

#[test]
fn bad_commands_are_refused_with_a_reason() {
    let mut s = state_with(&[]);
    let refused = |s: &mut AuthState, c: AuthCommand| s.apply(&c).unwrap_err().to_string();
    assert_eq!(
        refused(&mut s, AuthCommand::UserAdd { name: "alice".into(), password_hash: None }),
        "user \"alice\" already exists"
    );
    assert!(
        refused(&mut s, AuthCommand::UserAdd { name: String::new(), password_hash: None }).contains("1 to 128 bytes")
    );
    assert!(refused(&mut s, AuthCommand::UserAdd { name: "a\nb".into(), password_hash: None }).contains("control"));
    assert_eq!(
        refused(&mut s, AuthCommand::UserGrant { user: "alice".into(), role: "nope".into() }),
        "role \"nope\" does not exist"
    );
    s.apply(&AuthCommand::RoleAdd { name: "r".into() }).unwrap();
    let empty = NameRange { start: b"b".to_vec(), end: b"a".to_vec() };
    assert!(refused(&mut s, AuthCommand::RoleGrant { role: "r".into(), range: empty, permission: Permission::Read })
        .contains("empty range"));
    assert_eq!(
        refused(&mut s, AuthCommand::RoleRevoke { role: "r".into(), range: NameRange::prefix("jobs/") }),
        "role \"r\" has no grant on prefix \"jobs/\""
    );
    assert_eq!(refused(&mut s, AuthCommand::RoleAdd { name: "root".into() }), "role \"root\" already exists");
}

/// A user's own quota, else the default; an own quota equal to the default is dropped (it
/// follows the default again), and a removed user's goes with it (a user added again under
/// the name starts from the default); a quota for a user that does not exist is refused.
#[test]
fn quotas_are_a_users_own_or_the_default() {
    let mut s = state_with(&[]);
    let q = |requests_per_s, sessions, names| Quota { requests_per_s, sessions, names };
    assert_eq!(s.quota_of("alice"), Quota::default());
    s.apply(&AuthCommand::SetQuota { user: None, quota: q(10, 2, 3) }).unwrap();
    assert_eq!(s.quota_of("alice"), q(10, 2, 3));
    s.apply(&AuthCommand::SetQuota { user: Some("alice".into()), quota: q(0, 1, 0) }).unwrap();
    assert_eq!((s.quota_of("alice"), s.quota_of("nobody")), (q(0, 1, 0), q(10, 2, 3)));
    s.apply(&AuthCommand::SetQuota { user: Some("alice".into()), quota: q(10, 2, 3) }).unwrap();
    assert!(s.quotas.is_empty(), "a quota equal to the default is not kept");
    s.apply(&AuthCommand::SetQuota { user: Some("alice".into()), quota: q(1, 1, 1) }).unwrap();
    s.apply(&AuthCommand::UserRemove { name: "alice".into() }).unwrap();
    s.apply(&AuthCommand::UserAdd { name: "alice".into(), password_hash: None }).unwrap();
    assert_eq!(s.quota_of("alice"), q(10, 2, 3));
    let before = s.clone();
    let r = s.apply(&AuthCommand::SetQuota { user: Some("bob".into()), quota: q(1, 1, 1) });
    assert_eq!(r, Err(AuthError::NoUser("bob".into())));
    assert_eq!(s, before, "a refused change changes nothing");
}

#[test]
fn prefix_ends_and_range_descriptions() {
    assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
    assert_eq!(NameRange::prefix("jobs/").describe(), "prefix \"jobs/\"");
    assert_eq!(NameRange::name("x").describe(), "name \"x\"");
    assert_eq!(NameRange::prefix("").describe(), "every name");
}

proptest! {
    /// `allows` on a range is exactly "some grant of enough level covers each name in it". The
    /// oracle: coverage can only change at a grant's or the range's bounds, so checking the
    /// range's start and every bound inside it, one name each, decides it exactly.
    #[test]
    fn a_range_is_allowed_exactly_when_each_of_its_names_is(
        grants in proptest::collection::vec(("[ab]{0,2}", "[ab]{0,3}", 0u8..4, any::<bool>()), 0..6),
        query in ("[ab]{0,3}", "[ab]{0,3}"),
        level in 0u8..4,
    ) {
        let levels = [Permission::Read, Permission::Lock, Permission::Write, Permission::Admin];
        let mut s = state_with(&[]);
        s.apply(&AuthCommand::RoleAdd { name: "r".into() }).unwrap();
        s.apply(&AuthCommand::UserGrant { user: "alice".into(), role: "r".into() }).unwrap();
        for (a, b, l, is_prefix) in grants {
            let range =
                if is_prefix { NameRange::prefix(&a) } else { NameRange { start: a.into_bytes(), end: b.into_bytes() } };
            let _ = s.apply(&AuthCommand::RoleGrant { role: "r".into(), range, permission: levels[l as usize] });
        }
        let permission = levels[level as usize];
        let (qa, qb) = (query.0.into_bytes(), query.1.into_bytes());
        prop_assume!(qb.is_empty() || qa < qb);
        let granted: Vec<&NameRange> =
            s.roles["r"].grants.iter().filter(|(_, p)| **p >= permission).map(|(g, _)| g).collect();
        let inside = |p: &Vec<u8>| p >= &qa && (qb.is_empty() || p < &qb);
        let mut points: Vec<&Vec<u8>> =
            granted.iter().flat_map(|g| [&g.start, &g.end]).filter(|p| !p.is_empty() && inside(p)).collect();
        points.push(&qa);
        let oracle = points.iter().all(|p| granted.iter().any(|g| g.contains(p)));
        let range = NameRange { start: qa.clone(), end: qb.clone() };
        prop_assert_eq!(s.allows("alice", permission, &range), oracle, "{}", range.describe());
    }
}
