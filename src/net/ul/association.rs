//! Association negotiation as a pure function: an A-ASSOCIATE-RQ goes in, the A-ASSOCIATE-AC
//! (with the negotiated state) or A-ASSOCIATE-RJ to send comes out (PS3.8 §7.1, §9.3.2-4).
//!
//! Policy — our AE title, the calling-AE allow-list, the association limit, which abstract
//! syntaxes are supported — is data in [`AcceptorPolicy`]; the standard's reject reasons are
//! chosen here and nowhere else.

use std::collections::HashMap;

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderASCEReason,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, AssociationRQ, PresentationContextResult, PresentationContextResultReason,
    RequestorRoles, UserVariableItem,
};

/// The DICOM application context name (PS3.7 Annex A.2.1).
pub const DICOM_APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// What we accept.
#[derive(Debug, Clone)]
pub struct AcceptorPolicy {
    /// Our AE title.
    pub ae_title: String,
    /// Reject a called AE title other than ours.
    pub require_called_ae_title: bool,
    /// Calling AE titles allowed (empty = anyone).
    pub allowed_calling_ae_titles: Vec<String>,
    /// Maximum length we announce for P-DATA-TF PDUs.
    pub max_pdu_length: u32,
}

/// An accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    /// Abstract syntax (SOP class) UID.
    pub abstract_syntax: String,
    /// The one transfer syntax accepted for it.
    pub transfer_syntax: String,
}

/// What a port offers, as negotiation sees it. A closure `Fn(&str) -> bool` is an offer that
/// decides abstract syntaxes only (no SCP role for the requestor, no extended negotiation).
pub trait Offered {
    /// Whether an abstract syntax is accepted.
    fn supports(&self, abstract_syntax: &str) -> bool;

    /// Whether the requestor may act as SCP for `sop_class` (SCP/SCU Role Selection, PS3.7
    /// D.3.3.4): what C-GET needs, so that we can send it C-STOREs on the same association.
    fn requestor_may_be_scp(&self, _sop_class: &str) -> bool {
        false
    }

    /// Our answer to a SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5): the
    /// application information we accept, or `None` to leave the item out (every option
    /// declined).
    fn extended_negotiation(&self, _sop_class: &str, _proposed: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl<F: Fn(&str) -> bool> Offered for F {
    fn supports(&self, abstract_syntax: &str) -> bool {
        self(abstract_syntax)
    }
}

/// The state of an accepted association that the service layer needs.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// Calling AE title (trimmed).
    pub calling_ae_title: String,
    /// Called AE title (trimmed).
    pub called_ae_title: String,
    /// The peer's maximum PDU length (0 = unlimited): what we may send.
    pub peer_max_pdu_length: u32,
    /// Accepted presentation contexts by ID.
    pub contexts: HashMap<u8, AcceptedContext>,
    /// Roles agreed per SOP class by SCP/SCU Role Selection (absent: the default, the
    /// requestor is SCU only).
    pub roles: HashMap<String, RequestorRoles>,
    /// SOP Class Extended Negotiation as agreed: our answer per SOP class.
    pub extended: HashMap<String, Vec<u8>>,
}

/// Why an association was rejected, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// Bit 0 of the protocol version is not set.
    #[error("protocol version not supported")]
    ProtocolVersion,
    /// Application context name is not the DICOM one.
    #[error("application context name not supported")]
    ApplicationContext,
    /// Called AE title is not ours (and that is enforced).
    #[error("called AE title not recognized")]
    CalledAeTitle,
    /// Calling AE title is not on the allow-list.
    #[error("calling AE title not recognized")]
    CallingAeTitle,
    /// Too many associations.
    #[error("local limit exceeded")]
    LocalLimit,
    /// The peer's address is outside the service's `allowed_peers`.
    #[error("peer address not allowed")]
    PeerAddress,
}

impl RejectReason {
    /// Every reason, in the order of [`RejectReason::label`]'s metric labels.
    pub const ALL: [RejectReason; 6] = [
        RejectReason::ProtocolVersion,
        RejectReason::ApplicationContext,
        RejectReason::CalledAeTitle,
        RejectReason::CallingAeTitle,
        RejectReason::LocalLimit,
        RejectReason::PeerAddress,
    ];

    /// Metric label (`reason` of `dicomgw_association_rejects_total`).
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::ProtocolVersion => "protocol_version",
            RejectReason::ApplicationContext => "application_context",
            RejectReason::CalledAeTitle => "called_ae_title",
            RejectReason::CallingAeTitle => "calling_ae_title",
            RejectReason::LocalLimit => "local_limit",
            RejectReason::PeerAddress => "peer_address",
        }
    }
}

/// The answer to an A-ASSOCIATE-RQ.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Send this A-ASSOCIATE-AC (both boxed: they carry every context's result).
    Accept(Box<AssociationAC>, Box<Negotiated>),
    /// Send this A-ASSOCIATE-RJ.
    Reject(AssociationRJ, RejectReason),
}

/// Whether we can store a dataset in this transfer syntax: we never decode pixel data, but we
/// parse the header for the index, so the syntax must be one dicom-parser knows.
pub fn transfer_syntax_supported(uid: &str) -> bool {
    TransferSyntaxRegistry
        .get(uid.trim_end_matches('\0'))
        .is_some()
}

/// The Maximum Length a peer announced in its user information (PS3.8 D.1); 0 = unlimited,
/// which is also what an absent item means.
pub fn max_length(user_variables: &[UserVariableItem]) -> u32 {
    user_variables
        .iter()
        .find_map(|v| match v {
            UserVariableItem::MaxLength(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

fn reject(result: AssociationRJResult, source: AssociationRJSource, why: RejectReason) -> Decision {
    Decision::Reject(AssociationRJ { result, source }, why)
}

/// The rejection of a peer whose network address is not allowed: permanent, by the service
/// user, no reason given (PS3.8 Table 9-21 has no reason for addresses; a permanent
/// rejection tells the peer not to retry as is).
pub fn reject_peer() -> Decision {
    reject(
        AssociationRJResult::Permanent,
        AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
        RejectReason::PeerAddress,
    )
}

/// Negotiates an association. `over_limit` says the association limit is reached; `offered`
/// decides each proposed abstract syntax, the roles and the extended negotiation.
pub fn negotiate(
    rq: &AssociationRQ,
    policy: &AcceptorPolicy,
    over_limit: bool,
    offered: impl Offered,
) -> Decision {
    use AssociationRJResult::{Permanent, Transient};
    if rq.protocol_version & 1 == 0 {
        return reject(
            Permanent,
            AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
            ),
            RejectReason::ProtocolVersion,
        );
    }
    if rq.application_context_name.trim_end_matches('\0').trim() != DICOM_APPLICATION_CONTEXT {
        return reject(
            Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
            ),
            RejectReason::ApplicationContext,
        );
    }
    let called = rq.called_ae_title.trim().to_owned();
    let calling = rq.calling_ae_title.trim().to_owned();
    if policy.require_called_ae_title && called != policy.ae_title {
        return reject(
            Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            ),
            RejectReason::CalledAeTitle,
        );
    }
    if !policy.allowed_calling_ae_titles.is_empty()
        && !policy.allowed_calling_ae_titles.contains(&calling)
    {
        return reject(
            Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
            ),
            RejectReason::CallingAeTitle,
        );
    }
    if over_limit {
        return reject(
            Transient,
            AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
            RejectReason::LocalLimit,
        );
    }

    let mut contexts = HashMap::new();
    let mut results: Vec<PresentationContextResult> =
        Vec::with_capacity(rq.presentation_contexts.len());
    for pc in &rq.presentation_contexts {
        // PS3.8 §9.3.2.2: IDs are unique. A repeated ID gets no second answer (found by
        // fuzzing: answering both let the peer and us disagree on the transfer syntax).
        if results.iter().any(|r| r.id == pc.id) {
            continue;
        }
        let abstract_syntax = pc.abstract_syntax.trim_end_matches('\0').trim();
        let (reason, ts) = if !offered.supports(abstract_syntax) {
            (
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                None,
            )
        } else {
            // The sender lists transfer syntaxes in its order of preference: take the first we
            // can store, so the bytes arrive as the sender prefers to send them.
            match pc
                .transfer_syntaxes
                .iter()
                .map(|t| t.trim_end_matches('\0').trim())
                .find(|t| transfer_syntax_supported(t))
            {
                Some(ts) => (
                    PresentationContextResultReason::Acceptance,
                    Some(ts.to_owned()),
                ),
                None => (
                    PresentationContextResultReason::TransferSyntaxesNotSupported,
                    None,
                ),
            }
        };
        if let Some(ts) = &ts {
            contexts.insert(
                pc.id,
                AcceptedContext {
                    abstract_syntax: abstract_syntax.to_owned(),
                    transfer_syntax: ts.clone(),
                },
            );
        }
        results.push(PresentationContextResult {
            id: pc.id,
            reason,
            // PS3.8 §9.3.3.2: the transfer syntax sub-item is ignored when not accepted, but
            // must be present; repeat the first proposed.
            transfer_syntax: ts
                .unwrap_or_else(|| pc.transfer_syntaxes.first().cloned().unwrap_or_default()),
        });
    }
    let peer_max_pdu_length = max_length(&rq.user_variables);
    let mut user_variables = vec![
        UserVariableItem::MaxLength(policy.max_pdu_length),
        UserVariableItem::ImplementationClassUID(crate::IMPLEMENTATION_CLASS_UID.to_owned()),
        UserVariableItem::ImplementationVersionName(crate::IMPLEMENTATION_VERSION_NAME.to_owned()),
    ];
    let (mut roles, mut extended) = (HashMap::new(), HashMap::new());
    for item in &rq.user_variables {
        match item {
            // PS3.7 D.3.3.4: answer each proposed class; a role not proposed is never granted.
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, proposed) => {
                let uid = uid.trim_end_matches('\0').trim().to_owned();
                if !offered.supports(&uid) || roles.contains_key(&uid) {
                    continue;
                }
                let agreed = RequestorRoles {
                    scu: proposed.scu,
                    scp: proposed.scp && offered.requestor_may_be_scp(&uid),
                };
                user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
                    uid.clone(),
                    agreed,
                ));
                roles.insert(uid, agreed);
            }
            UserVariableItem::SopClassExtendedNegotiationSubItem(uid, info) => {
                let uid = uid.trim_end_matches('\0').trim().to_owned();
                if !offered.supports(&uid) || extended.contains_key(&uid) {
                    continue;
                }
                if let Some(answer) = offered.extended_negotiation(&uid, info) {
                    user_variables.push(UserVariableItem::SopClassExtendedNegotiationSubItem(
                        uid.clone(),
                        answer.clone(),
                    ));
                    extended.insert(uid, answer);
                }
            }
            _ => {}
        }
    }
    let ac = AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: DICOM_APPLICATION_CONTEXT.to_owned(),
        presentation_contexts: results,
        user_variables,
    };
    Decision::Accept(
        Box::new(ac),
        Box::new(Negotiated {
            calling_ae_title: calling,
            called_ae_title: called,
            peer_max_pdu_length,
            contexts,
            roles,
            extended,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::PresentationContextProposed;

    fn policy() -> AcceptorPolicy {
        AcceptorPolicy {
            ae_title: "DICOM_GW".into(),
            require_called_ae_title: false,
            allowed_calling_ae_titles: vec![],
            max_pdu_length: 262_144,
        }
    }

    fn rq(contexts: Vec<(u8, &str, Vec<&str>)>) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "MODALITY".into(),
            called_ae_title: "ANY_SCP".into(),
            application_context_name: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: contexts
                .into_iter()
                .map(|(id, a, ts)| PresentationContextProposed {
                    id,
                    abstract_syntax: a.into(),
                    transfer_syntaxes: ts.into_iter().map(String::from).collect(),
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        }
    }

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const ELE: &str = "1.2.840.10008.1.2.1";
    const ILE: &str = "1.2.840.10008.1.2";

    #[test]
    fn accepts_first_supported_transfer_syntax_and_rejects_unknown_classes() {
        let d = negotiate(
            &rq(vec![
                (1, CT, vec!["1.2.3.4.999", ELE, ILE]),
                (3, "1.2.3.4.5", vec![ILE]),
                (5, CT, vec!["9.9.9"]),
            ]),
            &policy(),
            false,
            |a: &str| a == CT,
        );
        let Decision::Accept(ac, n) = d else {
            panic!("rejected")
        };
        assert_eq!(n.peer_max_pdu_length, 16384);
        assert_eq!(n.calling_ae_title, "MODALITY");
        assert_eq!(n.contexts[&1].transfer_syntax, ELE);
        assert!(!n.contexts.contains_key(&3) && !n.contexts.contains_key(&5));
        assert_eq!(
            ac.presentation_contexts[0].reason,
            PresentationContextResultReason::Acceptance
        );
        assert_eq!(
            ac.presentation_contexts[1].reason,
            PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        assert_eq!(
            ac.presentation_contexts[2].reason,
            PresentationContextResultReason::TransferSyntaxesNotSupported
        );
        assert!(ac
            .user_variables
            .contains(&UserVariableItem::MaxLength(262_144)));
    }

    #[test]
    fn reject_reasons_follow_ps3_8() {
        let mut p = policy();
        p.require_called_ae_title = true;
        let Decision::Reject(rj, why) = negotiate(&rq(vec![]), &p, false, |_: &str| true) else {
            panic!()
        };
        assert_eq!(why, RejectReason::CalledAeTitle);
        assert_eq!(rj.result, AssociationRJResult::Permanent);
        assert_eq!(
            rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized
            )
        );

        let mut p = policy();
        p.allowed_calling_ae_titles = vec!["CT1".into()];
        let Decision::Reject(rj, _) = negotiate(&rq(vec![]), &p, false, |_: &str| true) else {
            panic!()
        };
        assert_eq!(
            rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized
            )
        );

        let Decision::Reject(rj, why) = negotiate(&rq(vec![]), &policy(), true, |_: &str| true)
        else {
            panic!()
        };
        assert_eq!(why, RejectReason::LocalLimit);
        assert_eq!(rj.result, AssociationRJResult::Transient);
        assert_eq!(
            rj.source,
            AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded
            )
        );

        let mut bad = rq(vec![]);
        bad.application_context_name = "1.2.3".into();
        let Decision::Reject(_, why) = negotiate(&bad, &policy(), false, |_: &str| true) else {
            panic!()
        };
        assert_eq!(why, RejectReason::ApplicationContext);

        let mut bad = rq(vec![]);
        bad.protocol_version = 2;
        let Decision::Reject(_, why) = negotiate(&bad, &policy(), false, |_: &str| true) else {
            panic!()
        };
        assert_eq!(why, RejectReason::ProtocolVersion);
    }

    /// A port that lets the requestor be SCP for CT (as a C-GET SCP would) and accepts
    /// relational queries on Study Root FIND.
    struct GetAndRelational;

    const FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

    impl Offered for GetAndRelational {
        fn supports(&self, a: &str) -> bool {
            a == CT || a == FIND
        }
        fn requestor_may_be_scp(&self, c: &str) -> bool {
            c == CT
        }
        fn extended_negotiation(&self, c: &str, p: &[u8]) -> Option<Vec<u8>> {
            (c == FIND).then(|| vec![p.first().copied().unwrap_or(0) & 1])
        }
    }

    #[test]
    fn role_selection_and_extended_negotiation_are_answered_per_class() {
        let mut r = rq(vec![(1, CT, vec![ELE]), (3, FIND, vec![ELE])]);
        let both = RequestorRoles {
            scu: true,
            scp: true,
        };
        r.user_variables.extend([
            UserVariableItem::ScuScpRoleSelectionSubItem(CT.into(), both),
            UserVariableItem::ScuScpRoleSelectionSubItem(FIND.into(), both),
            UserVariableItem::ScuScpRoleSelectionSubItem("1.2.3.999".into(), both),
            UserVariableItem::SopClassExtendedNegotiationSubItem(FIND.into(), vec![1, 1, 0]),
            UserVariableItem::SopClassExtendedNegotiationSubItem(CT.into(), vec![1]),
        ]);
        let Decision::Accept(ac, n) = negotiate(&r, &policy(), false, GetAndRelational) else {
            panic!("rejected")
        };
        // The SCP role only where the port allows it; never a role that was not proposed.
        assert_eq!(n.roles[CT], both);
        assert_eq!(
            n.roles[FIND],
            RequestorRoles {
                scu: true,
                scp: false
            }
        );
        assert!(
            !n.roles.contains_key("1.2.3.999"),
            "unsupported classes get no answer"
        );
        assert!(ac
            .user_variables
            .contains(&UserVariableItem::ScuScpRoleSelectionSubItem(
                CT.into(),
                both
            )));
        // Extended negotiation: our subset for FIND; nothing for CT (left out = declined).
        assert_eq!(n.extended[FIND], vec![1]);
        assert!(!n.extended.contains_key(CT));
        assert!(ac
            .user_variables
            .contains(&UserVariableItem::SopClassExtendedNegotiationSubItem(
                FIND.into(),
                vec![1]
            )));
        // The AC encodes and decodes with them (the sub-items are on the wire as proposed).
        let mut bytes = Vec::new();
        dicom_ul::pdu::write_pdu(&mut bytes, &dicom_ul::pdu::Pdu::AssociationAC(*ac.clone()))
            .unwrap();
        let back = dicom_ul::pdu::read_pdu(&bytes[..], 1 << 20, true)
            .unwrap()
            .unwrap();
        assert_eq!(back, dicom_ul::pdu::Pdu::AssociationAC(*ac));
    }

    #[test]
    fn a_plain_offer_grants_no_scp_role() {
        let mut r = rq(vec![(1, CT, vec![ELE])]);
        r.user_variables
            .push(UserVariableItem::ScuScpRoleSelectionSubItem(
                CT.into(),
                RequestorRoles {
                    scu: false,
                    scp: true,
                },
            ));
        let Decision::Accept(_, n) = negotiate(&r, &policy(), false, |a: &str| a == CT) else {
            panic!("rejected")
        };
        assert_eq!(
            n.roles[CT],
            RequestorRoles {
                scu: false,
                scp: false
            }
        );
    }

    #[test]
    fn a_peer_outside_the_allowed_networks_is_rejected_permanently() {
        let Decision::Reject(rj, why) = reject_peer() else {
            panic!("accepted")
        };
        assert_eq!(why, RejectReason::PeerAddress);
        assert_eq!(rj.result, AssociationRJResult::Permanent);
    }

    #[test]
    fn a_repeated_context_id_gets_one_answer() {
        let d = negotiate(
            &rq(vec![(1, CT, vec![ELE]), (1, CT, vec![ILE])]),
            &policy(),
            false,
            |a: &str| a == CT,
        );
        let Decision::Accept(ac, n) = d else {
            panic!("rejected")
        };
        assert_eq!(ac.presentation_contexts.len(), 1);
        assert_eq!(ac.presentation_contexts[0].transfer_syntax, ELE);
        assert_eq!(n.contexts[&1].transfer_syntax, ELE);
    }
}
