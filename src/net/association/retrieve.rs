//! C-MOVE and C-GET on an established association: the identifier is matched on the
//! retrieve pool, sub-operations run (C-MOVE: a storage SCU association to the destination;
//! C-GET: C-STOREs on this association), pending responses carry the counts, a C-CANCEL
//! stops at the next sub-operation.
//!
//! Skeleton (issue 13): refuses until the service is built.

use tracing::warn;

use super::{Established, Flow};
use crate::net::dimse::command::{encode_response, Command};
use crate::net::dimse::status::UNRECOGNIZED_OPERATION;
use crate::net::services::Route;
use crate::rt::{NetStream, ObjFile};

impl<F: ObjFile, S: NetStream> Established<F, S> {
    /// A C-MOVE-RQ or C-GET-RQ with its identifier (`None`: it came without one).
    pub(super) async fn query_retrieve(
        &mut self,
        route: Route,
        cmd: Command,
        pc_id: u8,
        _identifier: Option<Vec<u8>>,
    ) -> Flow {
        warn!(?route, "C-MOVE/C-GET not built yet");
        let rsp = encode_response(
            &cmd,
            cmd.command_field | 0x8000,
            UNRECOGNIZED_OPERATION,
            Some("not built yet"),
        );
        self.reply(pc_id, &rsp, None).await
    }
}
