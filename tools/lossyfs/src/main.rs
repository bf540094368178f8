//! `lossyfs MOUNTPOINT`: serves an empty lossy filesystem at MOUNTPOINT in the foreground.
//! Control: write `cut`, `sync`, `tear SEED`, `no-tear`, `fail-writes [MIN_BYTES]` or `heal`
//! to MOUNTPOINT/.lossyfs-ctl; read it for the counters. After a `cut`, unmount (`umount MOUNTPOINT`): lossyfs mounts again with
//! the durable state. Unmounting while the power is on ends it.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(mnt), None) = (args.next(), args.next()) else {
        eprintln!("usage: lossyfs MOUNTPOINT");
        std::process::exit(2);
    };
    let mnt = std::path::PathBuf::from(mnt);
    let fs = lossyfs::Lossy::new();
    loop {
        if let Err(e) = fs.mount_blocking(&mnt) {
            eprintln!("lossyfs: {}: {e}", mnt.display());
            std::process::exit(1);
        }
        if !fs.state().dead {
            break;
        }
        eprintln!("lossyfs: unmounted after a cut: mounting the durable state again");
        fs.power_on();
    }
    eprint!("{}", fs.status());
}
