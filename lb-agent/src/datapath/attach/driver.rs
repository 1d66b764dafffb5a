//! Which driver runs an interface (ETHTOOL_GDRVINFO), for `--xdp-mode auto`.
//!
//! An ioctl on a socket answers for the agent's own network namespace, where sysfs may show
//! another namespace's interfaces (it belongs to whoever mounted it).

use std::{io, os::fd::AsRawFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// `SIOCETHTOOL` (include/uapi/linux/sockios.h).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GDRVINFO` (include/uapi/linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut DrvInfo,
    _pad: [u8; 16],
}

/// The driver name of `iface`, e.g. `veth`, `mlx5_core`, `virtio_net`.
///
/// # Errors
/// If the name is too long, no socket can be opened or the interface does not exist.
pub fn driver_of(iface: &str) -> io::Result<String> {
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {iface:?} is too long"),
        ));
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: `req` is a valid ifreq whose data points at a live ethtool_drvinfo, both of
    // which outlive the call; the kernel writes only within them.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_driver_info_but_a_clear_error_and_long_names_are_refused() {
        // `lo` answers EOPNOTSUPP (it has no ethtool driver info); either way no panic.
        let _ = driver_of("lo");
        assert!(driver_of("a-name-far-too-long-for-linux").is_err());
        assert!(driver_of("nosuchif0").is_err());
    }
}
