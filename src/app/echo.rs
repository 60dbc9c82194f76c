//! `/echo`: every message goes back as it came, with its opcode (conformance runs, probes).

use wsgate_proto::OpCode;

use super::Session;

pub fn on_message(session: &mut impl Session, opcode: OpCode, data: &[u8]) {
    session.send(opcode, data);
}
