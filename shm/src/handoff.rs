//! Session set-up over a Unix socket: the peer's credentials, and passing the segment's memfd
//! with SCM_RIGHTS. The socket stays open for the whole session as its liveness signal.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Credentials of the process at the other end of a Unix socket (SO_PEERCRED): who it was
/// when it connected, as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The peer's credentials.
pub fn peer_cred(sock: impl AsFd) -> io::Result<PeerCred> {
    let c = rustix::net::sockopt::socket_peercred(sock)?;
    Ok(PeerCred {
        pid: c.pid.as_raw_nonzero().get(),
        uid: c.uid.as_raw(),
        gid: c.gid.as_raw(),
    })
}

/// Sends `bytes` with `fd` attached, in one message. The socket may be non-blocking; the
/// caller retries on `WouldBlock`.
pub fn send_with_fd(sock: impl AsFd, bytes: &[u8], fd: impl AsFd) -> io::Result<()> {
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short send of the hand-off message",
        ));
    }
    Ok(())
}

/// Receives one message into `buf`, with the file descriptor attached to it if there is one
/// (extra descriptors are closed). Returns the byte count and the descriptor.
pub fn recv_with_fd(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    Ok((msg.bytes, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fd_and_credentials_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let me = peer_cred(&a).unwrap();
        assert_eq!(me.pid as u32, std::process::id());
        let seg = crate::Segment::create(crate::segment::MIN_RING).unwrap();
        send_with_fd(&a, b"hello", seg.fd()).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let other = crate::Segment::open(fd.unwrap()).unwrap();
        other.write_bytes(crate::segment::offsets::REQ_DATA, b"shared!");
        let mut seen = [0u8; 7];
        seg.read_bytes(crate::segment::offsets::REQ_DATA, &mut seen);
        assert_eq!(&seen, b"shared!");
    }
}
