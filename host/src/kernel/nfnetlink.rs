//! nfnetlink framing shared by the nf_tables backend
//! (`firewall::nft::netlink`) and conntrack (`kernel::conntrack`): messages
//! built and taken apart, attributes written and walked, the socket opened,
//! dumps read to their end, acknowledgements read back as errno. The
//! message walk and the header constants are plain netlink; the link
//! deletion (`kernel::netlink::link`) reads route announcements with them.
//!
//! Layout (`include/uapi/linux/netlink.h`, `netfilter/nfnetlink.h`): a
//! message is a 16-byte header (length, type, flags, sequence, port id, in
//! host byte order), a 4-byte `nfgenmsg` (family, version, resource id in
//! network order) and attributes; an attribute is a 4-byte header (length,
//! type) and its value, padded to four bytes. A message's type is its
//! subsystem in the high byte and the subsystem's message in the low one.

use std::io;
use std::time::Duration;

use netlink_sys::{constants::NETLINK_NETFILTER, Socket};

pub(crate) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// Set on a dump's answers when the listed objects changed while dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;

const NLA_F_NESTED: u16 = 0x8000;
/// An attribute's type without its flags (nested, network byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFNETLINK_V0: u8 = 0;
const HEADER_LEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGEN_LEN: usize = 4;
/// Messages and attributes start at multiples of this.
const ALIGN: usize = 4;

/// How long to wait for the kernel's answer before giving up.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often a dump interrupted by concurrent changes is started.
const DUMP_TRIES: usize = 3;

/// Pads `buf` with zeros to where the next attribute starts.
pub(crate) fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(ALIGN), 0);
}

/// Appends attribute `kind` holding `value`, padded.
pub(crate) fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

/// A string attribute, NUL-terminated.
pub(crate) fn put_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    put_attr(buf, kind, &b);
}

/// An attribute holding the attributes `fill` writes.
pub(crate) fn put_nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    put_attr(buf, kind | NLA_F_NESTED, &inner);
}

/// A message: netlink header, `nfgenmsg`, then `attrs` (padded already).
/// The port id is left 0 for the kernel to fill in.
pub(crate) fn message(
    subsys: u16,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Vec<u8> {
    let len = HEADER_LEN + NFGEN_LEN + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((subsys << 8) | msg_type).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(NFNETLINK_V0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// An error for kernel input that does not parse.
pub(crate) fn malformed(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One attribute of a received payload.
#[derive(Debug)]
pub(crate) struct Attr<'a> {
    /// The type, without flags.
    pub kind: u16,
    pub value: &'a [u8],
    /// The attribute as received: header and value, without padding.
    pub raw: &'a [u8],
}

/// The attributes of a payload, in order.
pub(crate) fn attrs(mut b: &[u8]) -> io::Result<Vec<Attr<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(&[l0, l1, t0, t1]) = b.first_chunk() else {
            return Err(malformed(format!(
                "{} bytes after the last netlink attribute",
                b.len()
            )));
        };
        let len = u16::from_ne_bytes([l0, l1]) as usize;
        let Some(raw) = b.get(..len).filter(|_| len >= 4) else {
            return Err(malformed(format!(
                "netlink attribute of {len} bytes where {} remain",
                b.len()
            )));
        };
        out.push(Attr {
            kind: u16::from_ne_bytes([t0, t1]) & NLA_TYPE_MASK,
            value: &raw[4..],
            raw,
        });
        b = &b[len.next_multiple_of(ALIGN).min(b.len())..];
    }
    Ok(out)
}

/// A netlink message as received.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

impl Received<'_> {
    /// The attributes of an nfnetlink message: its payload after the
    /// `nfgenmsg`.
    fn body(&self) -> io::Result<&[u8]> {
        self.payload.get(NFGEN_LEN..).ok_or_else(|| {
            malformed(format!(
                "nfnetlink message of type {:#x} without its nfgenmsg",
                self.kind
            ))
        })
    }
}

/// The messages of one datagram, in order.
pub(crate) fn messages(mut b: &[u8]) -> io::Result<Vec<Received<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(h) = b.first_chunk::<HEADER_LEN>() else {
            return Err(malformed(format!(
                "{} bytes after the last netlink message",
                b.len()
            )));
        };
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let Some(whole) = b.get(..len).filter(|_| len >= HEADER_LEN) else {
            return Err(malformed(format!(
                "netlink message of {len} bytes where {} remain",
                b.len()
            )));
        };
        out.push(Received {
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            payload: &whole[HEADER_LEN..],
        });
        b = &b[len.next_multiple_of(ALIGN).min(b.len())..];
    }
    Ok(out)
}

/// What an `NLMSG_ERROR` payload reports: Ok for an acknowledgement, the
/// kernel's errno otherwise.
pub(crate) fn acked(payload: &[u8]) -> io::Result<()> {
    let code = payload
        .first_chunk()
        .map(|b| i32::from_ne_bytes(*b))
        .ok_or_else(|| malformed("netlink error message too short"))?;
    match code {
        0 => Ok(()),
        c => Err(io::Error::from_raw_os_error(c.saturating_neg())),
    }
}

/// A netfilter netlink socket in the calling thread's network namespace:
/// bound, acknowledged without the request copied back, and giving up on
/// an answer after `TIMEOUT`.
pub(crate) fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.set_cap_ack(true)?;
    let tv = nix::sys::time::TimeVal::new(TIMEOUT.as_secs() as i64, 0);
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(io::Error::from)?;
    Ok(sock)
}

/// The next datagram, whatever its size.
pub(crate) fn receive(sock: &Socket) -> io::Result<Vec<u8>> {
    sock.recv_from_full().map(|(b, _)| b)
}

/// Sends `request` (sequence `seq`, asking for an acknowledgement) and
/// waits for its answer: Ok, or the kernel's errno.
pub(crate) fn call(sock: &Socket, seq: u32, request: &[u8]) -> io::Result<()> {
    get(sock, seq, request).map(drop)
}

/// Sends the request `request` (sequence `seq`, asking for an
/// acknowledgement) and returns the attributes of every answer before the
/// acknowledgement, or the kernel's errno.
pub(crate) fn get(sock: &Socket, seq: u32, request: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    sock.send(request, 0)?;
    let mut answers = Vec::new();
    loop {
        let buf = receive(sock)?;
        for m in messages(&buf)? {
            if m.seq != seq {
                continue;
            }
            if m.kind == NLMSG_ERROR {
                return acked(m.payload).map(|()| answers);
            }
            answers.push(m.body()?.to_vec());
        }
    }
}

/// Sends the dump request `request(seq)` and reads the answers up to
/// `NLMSG_DONE`, then hands each one's attributes to `each`. A dump the
/// kernel marks interrupted by a concurrent change is started again with
/// the next sequence number; `seq` is left at the first one not used.
pub(crate) fn dump(
    sock: &Socket,
    seq: &mut u32,
    request: impl Fn(u32) -> Vec<u8>,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    for _ in 0..DUMP_TRIES {
        let this = *seq;
        *seq = seq.wrapping_add(1);
        sock.send(&request(this), 0)?;
        let mut answers: Vec<Vec<u8>> = Vec::new();
        let mut interrupted = false;
        'read: loop {
            let buf = receive(sock)?;
            for m in messages(&buf)? {
                if m.seq != this {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.kind {
                    NLMSG_DONE => break 'read,
                    NLMSG_ERROR => {
                        acked(m.payload)?;
                        break 'read;
                    }
                    // Every other message of this sequence is an answer.
                    _ => answers.push(m.body()?.to_vec()),
                }
            }
        }
        if !interrupted {
            return answers.iter().try_for_each(|a| each(a));
        }
    }
    // Kept changing while listed.
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_framed_and_padded() {
        let mut b = Vec::new();
        put_str(&mut b, 1, "ab");
        put_nested(&mut b, 2, |n| put_attr(n, 3, &[9]));
        let mut want = Vec::new();
        want.extend_from_slice(&7u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[b'a', b'b', 0, 0]);
        want.extend_from_slice(&12u16.to_ne_bytes());
        want.extend_from_slice(&0x8002u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&3u16.to_ne_bytes());
        want.extend_from_slice(&[9, 0, 0, 0]);
        assert_eq!(b, want);

        let got = attrs(&b).expect("parses");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].kind, got[0].value), (1, &b"ab\0"[..]));
        // The nested flag is not part of the type; raw keeps the header.
        assert_eq!(got[1].kind, 2);
        assert_eq!(got[1].raw, &b[8..20]);
        let inner = attrs(got[1].value).expect("parses");
        assert_eq!((inner[0].kind, inner[0].value), (3, &[9][..]));
    }

    #[test]
    fn malformed_attributes_are_errors() {
        let mut b = Vec::new();
        put_attr(&mut b, 1, &[1, 2, 3, 4]);
        let mut long = b.clone();
        long[0] = 0xff; // longer than the payload
        assert!(attrs(&long).is_err());
        let mut short = b.clone();
        short[..2].copy_from_slice(&2u16.to_ne_bytes()); // shorter than its header
        assert!(attrs(&short).is_err());
        b.extend_from_slice(&[1, 0]); // a partial header
        assert!(attrs(&b).is_err());
        assert!(attrs(&[]).expect("empty parses").is_empty());
    }

    #[test]
    fn message_bytes_and_back() {
        let mut a = Vec::new();
        put_attr(&mut a, 1, &[7, 7, 7, 7]);
        let m = message(1, 2, NLM_F_REQUEST | NLM_F_ACK, 9, 10, 0x0102, &a);
        let mut want = Vec::new();
        want.extend_from_slice(&28u32.to_ne_bytes());
        want.extend_from_slice(&0x0102u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&9u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0x01, 0x02]); // family, v0, res_id (BE)
        want.extend_from_slice(&a);
        assert_eq!(m, want);

        let two = [m.clone(), message(0, 0x10, 0, 10, 0, 0, &[])].concat();
        let got = messages(&two).expect("parses");
        let seen: Vec<_> = got.iter().map(|r| (r.kind, r.flags, r.seq)).collect();
        assert_eq!(seen, vec![(0x0102, 5, 9), (0x10, 0, 10)]);
        assert_eq!(got[0].body().expect("has nfgenmsg"), &a[..]);
        assert!(got[1].body().expect("has nfgenmsg").is_empty());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(messages(&[0xff; 20]).is_err());
        assert!(messages(&[0; 8]).is_err());
        let mut m = message(1, 1, 0, 1, 0, 0, &[]);
        m[..4].copy_from_slice(&18u32.to_ne_bytes()); // two bytes of nfgenmsg
        let got = messages(&m[..18]).expect("header parses");
        assert!(got[0].body().is_err());
        assert!(acked(&[0, 0]).is_err());
    }

    #[test]
    fn netlink_errors_become_errno() {
        assert!(acked(&0i32.to_ne_bytes()).is_ok());
        let e = acked(&(-93i32).to_ne_bytes()).expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(93));
        // The request echoed after the code is ignored.
        let e = acked(&[(-2i32).to_ne_bytes(), [1; 4]].concat()).expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
