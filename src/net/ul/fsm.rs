//! The DICOM upper-layer state machine, PS3.8 §9.2, written as the standard's table.
//!
//! [`transition`] is PS3.8 Table 9-10 laid out row by row (one event per block, states in
//! order), so a reviewer can hold it against the standard line by line. `None` means the cell
//! is empty in the standard: the event cannot happen in that state (a local error). The
//! association handler feeds every PDU, primitive and timer through it and performs the action
//! it returns; nothing else decides what an out-of-order PDU does.

/// States Sta1–Sta13 (PS3.8 Table 9-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Idle.
    Sta1,
    /// Transport connection open, awaiting A-ASSOCIATE-RQ PDU.
    Sta2,
    /// Awaiting local A-ASSOCIATE response primitive.
    Sta3,
    /// Awaiting transport connection opening to complete.
    Sta4,
    /// Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU.
    Sta5,
    /// Association established and ready for data transfer.
    Sta6,
    /// Awaiting A-RELEASE-RP PDU.
    Sta7,
    /// Awaiting local A-RELEASE response primitive.
    Sta8,
    /// Release collision requestor side; awaiting A-RELEASE response primitive.
    Sta9,
    /// Release collision acceptor side; awaiting A-RELEASE-RP PDU.
    Sta10,
    /// Release collision requestor side; awaiting A-RELEASE-RP PDU.
    Sta11,
    /// Release collision acceptor side; awaiting A-RELEASE response primitive.
    Sta12,
    /// Awaiting transport connection close indication.
    Sta13,
}

/// Events Evt1–Evt19 (PS3.8 Table 9-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A-ASSOCIATE request (local user).
    Evt1,
    /// Transport connect confirmation (local transport service).
    Evt2,
    /// A-ASSOCIATE-AC PDU received.
    Evt3,
    /// A-ASSOCIATE-RJ PDU received.
    Evt4,
    /// Transport connection indication.
    Evt5,
    /// A-ASSOCIATE-RQ PDU received.
    Evt6,
    /// A-ASSOCIATE response primitive (accept).
    Evt7,
    /// A-ASSOCIATE response primitive (reject).
    Evt8,
    /// P-DATA request primitive.
    Evt9,
    /// P-DATA-TF PDU received.
    Evt10,
    /// A-RELEASE request primitive.
    Evt11,
    /// A-RELEASE-RQ PDU received.
    Evt12,
    /// A-RELEASE-RP PDU received.
    Evt13,
    /// A-RELEASE response primitive.
    Evt14,
    /// A-ABORT request primitive.
    Evt15,
    /// A-ABORT PDU received.
    Evt16,
    /// Transport connection closed indication.
    Evt17,
    /// ARTIM timer expired.
    Evt18,
    /// Unrecognized or invalid PDU received.
    Evt19,
}

/// Actions (PS3.8 Table 9-6 to 9-9). The comment on each is the standard's wording, short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Issue TRANSPORT CONNECT request primitive → Sta4.
    Ae1,
    /// Send A-ASSOCIATE-RQ PDU → Sta5.
    Ae2,
    /// Issue A-ASSOCIATE confirmation (accept) → Sta6.
    Ae3,
    /// Issue A-ASSOCIATE confirmation (reject), close transport → Sta1.
    Ae4,
    /// Issue transport connection response, start ARTIM → Sta2.
    Ae5,
    /// Stop ARTIM; if acceptable issue A-ASSOCIATE indication → Sta3, else send A-ASSOCIATE-RJ,
    /// start ARTIM → Sta13.
    Ae6,
    /// Send A-ASSOCIATE-AC PDU → Sta6.
    Ae7,
    /// Send A-ASSOCIATE-RJ PDU, start ARTIM → Sta13.
    Ae8,
    /// Send P-DATA-TF PDU → Sta6.
    Dt1,
    /// Issue P-DATA indication → Sta6.
    Dt2,
    /// Send A-RELEASE-RQ PDU → Sta7.
    Ar1,
    /// Issue A-RELEASE indication → Sta8.
    Ar2,
    /// Issue A-RELEASE confirmation, close transport → Sta1.
    Ar3,
    /// Send A-RELEASE-RP PDU, start ARTIM → Sta13.
    Ar4,
    /// Stop ARTIM → Sta1.
    Ar5,
    /// Issue P-DATA indication → Sta7.
    Ar6,
    /// Send P-DATA-TF PDU → Sta8.
    Ar7,
    /// Issue A-RELEASE indication (release collision) → Sta9 (requestor) or Sta10 (acceptor).
    Ar8,
    /// Send A-RELEASE-RP PDU → Sta11.
    Ar9,
    /// Issue A-RELEASE confirmation → Sta12.
    Ar10,
    /// Send A-ABORT PDU (service-user), start ARTIM → Sta13.
    Aa1,
    /// Stop ARTIM if running, close transport → Sta1.
    Aa2,
    /// Issue A-ABORT (or A-P-ABORT) indication, close transport → Sta1.
    Aa3,
    /// Issue A-P-ABORT indication → Sta1.
    Aa4,
    /// Stop ARTIM → Sta1.
    Aa5,
    /// Ignore PDU → Sta13.
    Aa6,
    /// Send A-ABORT PDU → Sta13.
    Aa7,
    /// Send A-ABORT PDU (service-provider), issue A-P-ABORT indication, start ARTIM → Sta13.
    Aa8,
}

impl Action {
    /// The state after the action. `accepted` decides AE-6 (the A-ASSOCIATE-RQ was acceptable)
    /// and `requestor` decides AR-8 (we requested the association).
    pub fn next_state(self, accepted: bool, requestor: bool) -> State {
        use Action::*;
        use State::*;
        match self {
            Ae1 => Sta4,
            Ae2 => Sta5,
            Ae3 | Ae7 | Dt1 | Dt2 => Sta6,
            Ae4 | Ar3 | Ar5 | Aa2 | Aa3 | Aa4 | Aa5 => Sta1,
            Ae5 => Sta2,
            Ae6 if accepted => Sta3,
            Ae6 | Ae8 | Ar4 | Aa1 | Aa6 | Aa7 | Aa8 => Sta13,
            Ar1 | Ar6 => Sta7,
            Ar2 | Ar7 => Sta8,
            Ar8 if requestor => Sta9,
            Ar8 => Sta10,
            Ar9 => Sta11,
            Ar10 => Sta12,
        }
    }
}

/// PS3.8 Table 9-10: the action for `event` in `state`, or `None` where the table is empty.
pub fn transition(state: State, event: Event) -> Option<Action> {
    use Action::*;
    use Event::*;
    use State::*;
    Some(match (event, state) {
        // Evt1: A-ASSOCIATE request (local user)
        (Evt1, Sta1) => Ae1,
        // Evt2: transport connect confirmation
        (Evt2, Sta4) => Ae2,
        // Evt3: A-ASSOCIATE-AC PDU received
        (Evt3, Sta2) => Aa1,
        (Evt3, Sta5) => Ae3,
        (Evt3, Sta3 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa8,
        (Evt3, Sta13) => Aa6,
        // Evt4: A-ASSOCIATE-RJ PDU received
        (Evt4, Sta2) => Aa1,
        (Evt4, Sta5) => Ae4,
        (Evt4, Sta3 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa8,
        (Evt4, Sta13) => Aa6,
        // Evt5: transport connection indication
        (Evt5, Sta1) => Ae5,
        // Evt6: A-ASSOCIATE-RQ PDU received
        (Evt6, Sta2) => Ae6,
        (Evt6, Sta3 | Sta5 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa8,
        (Evt6, Sta13) => Aa7,
        // Evt7 / Evt8: local A-ASSOCIATE response (accept / reject)
        (Evt7, Sta3) => Ae7,
        (Evt8, Sta3) => Ae8,
        // Evt9: P-DATA request primitive
        (Evt9, Sta6) => Dt1,
        (Evt9, Sta8) => Ar7,
        // Evt10: P-DATA-TF PDU received
        (Evt10, Sta2) => Aa1,
        (Evt10, Sta6) => Dt2,
        (Evt10, Sta7) => Ar6,
        (Evt10, Sta3 | Sta5 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa8,
        (Evt10, Sta13) => Aa6,
        // Evt11: A-RELEASE request primitive
        (Evt11, Sta6) => Ar1,
        // Evt12: A-RELEASE-RQ PDU received
        (Evt12, Sta2) => Aa1,
        (Evt12, Sta6) => Ar2,
        (Evt12, Sta7) => Ar8,
        (Evt12, Sta3 | Sta5 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa8,
        (Evt12, Sta13) => Aa6,
        // Evt13: A-RELEASE-RP PDU received
        (Evt13, Sta2) => Aa1,
        (Evt13, Sta7 | Sta11) => Ar3,
        (Evt13, Sta10) => Ar10,
        (Evt13, Sta3 | Sta5 | Sta6 | Sta8 | Sta9 | Sta12) => Aa8,
        (Evt13, Sta13) => Aa6,
        // Evt14: A-RELEASE response primitive
        (Evt14, Sta8 | Sta12) => Ar4,
        (Evt14, Sta9) => Ar9,
        // Evt15: A-ABORT request primitive
        (Evt15, Sta4) => Aa2,
        (Evt15, Sta3 | Sta5 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa1,
        // Evt16: A-ABORT PDU received
        (Evt16, Sta2 | Sta13) => Aa2,
        (Evt16, Sta3 | Sta5 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa3,
        // Evt17: transport connection closed
        (Evt17, Sta2) => Aa5,
        (Evt17, Sta3 | Sta4 | Sta5 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa4,
        (Evt17, Sta13) => Ar5,
        // Evt18: ARTIM timer expired
        (Evt18, Sta2 | Sta13) => Aa2,
        // Evt19: unrecognized or invalid PDU
        (Evt19, Sta2) => Aa1,
        (Evt19, Sta3 | Sta5 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12) => Aa8,
        (Evt19, Sta13) => Aa7,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Event::*;
    use State::*;

    const STATES: [State; 13] = [
        Sta1, Sta2, Sta3, Sta4, Sta5, Sta6, Sta7, Sta8, Sta9, Sta10, Sta11, Sta12, Sta13,
    ];
    const EVENTS: [Event; 19] = [
        Evt1, Evt2, Evt3, Evt4, Evt5, Evt6, Evt7, Evt8, Evt9, Evt10, Evt11, Evt12, Evt13, Evt14,
        Evt15, Evt16, Evt17, Evt18, Evt19,
    ];

    /// PS3.8 Table 9-10 transcribed independently as a grid (rows = events, columns = Sta1..13,
    /// "-" = empty cell), checked against the match above cell by cell.
    const GRID: [&str; 19] = [
        "AE-1 - - - - - - - - - - - -",
        "- - - AE-2 - - - - - - - - -",
        "- AA-1 AA-8 - AE-3 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-6",
        "- AA-1 AA-8 - AE-4 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-6",
        "AE-5 - - - - - - - - - - - -",
        "- AE-6 AA-8 - AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-7",
        "- - AE-7 - - - - - - - - - -",
        "- - AE-8 - - - - - - - - - -",
        "- - - - - DT-1 - AR-7 - - - - -",
        "- AA-1 AA-8 - AA-8 DT-2 AR-6 AA-8 AA-8 AA-8 AA-8 AA-8 AA-6",
        "- - - - - AR-1 - - - - - - -",
        "- AA-1 AA-8 - AA-8 AR-2 AR-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-6",
        "- AA-1 AA-8 - AA-8 AA-8 AR-3 AA-8 AA-8 AR-10 AR-3 AA-8 AA-6",
        "- - - - - - - AR-4 AR-9 - - AR-4 -",
        "- - AA-1 AA-2 AA-1 AA-1 AA-1 AA-1 AA-1 AA-1 AA-1 AA-1 -",
        "- AA-2 AA-3 - AA-3 AA-3 AA-3 AA-3 AA-3 AA-3 AA-3 AA-3 AA-2",
        "- AA-5 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AR-5",
        "- AA-2 - - - - - - - - - - AA-2",
        "- AA-1 AA-8 - AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-8 AA-7",
    ];

    fn name(a: Action) -> String {
        let s = format!("{a:?}").to_uppercase();
        let (kind, n) = s.split_at(2);
        format!("{kind}-{n}")
    }

    #[test]
    fn every_cell_matches_table_9_10() {
        for (e, row) in EVENTS.iter().zip(GRID) {
            let cells: Vec<&str> = row.split(' ').collect();
            assert_eq!(cells.len(), 13, "row for {e:?}");
            for (s, cell) in STATES.iter().zip(cells) {
                let got = transition(*s, *e).map(name).unwrap_or_else(|| "-".into());
                assert_eq!(got, cell, "{e:?} in {s:?}");
            }
        }
    }

    #[test]
    fn acceptor_happy_path() {
        let mut s = Sta1;
        for (e, accepted) in [
            (Evt5, true),
            (Evt6, true),
            (Evt7, true),
            (Evt10, true),
            (Evt9, true),
            (Evt12, true),
            (Evt14, true),
            (Evt17, true),
        ] {
            s = transition(s, e).unwrap().next_state(accepted, false);
        }
        assert_eq!(s, Sta1);
        assert_eq!(Ae6.next_state(false, false), Sta13);
        assert_eq!(Ar8.next_state(true, true), Sta9);
        assert_eq!(Ar8.next_state(true, false), Sta10);
    }
}
