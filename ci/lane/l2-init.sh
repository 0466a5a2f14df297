#!/bin/busybox sh
# /init of the L2 guest: a stock Debian cloud kernel booted by kvmm inside L1.
# Checks what a stock kernel must find on kvmm's platform, prints one
# "LANE-L2 CHECK name PASS|FAIL detail" line per check and a verdict line
# "LANE-L2 RESULT PASS|FAIL", then powers off (ACPI S5: kvmm must exit 0).
# Options come from the kernel command line: lane.cpus=N (expected CPUs),
# lane.disk=1 (a virtio-blk disk is attached), lane.net=1 with lane.ip=ADDR/LEN,
# lane.peer=ADDR, lane.pings=N (a virtio-net NIC: address it, ping the peer).
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin /mnt
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

failed=0
check() {   # check NAME DETAIL command...
    name=$1; detail=$2; shift 2
    if "$@" >/tmp/check.out 2>&1; then
        echo "LANE-L2 CHECK $name PASS $detail"
    else
        echo "LANE-L2 CHECK $name FAIL $detail: $(tail -n 3 /tmp/check.out | tr '\n' ' ')"
        failed=1
    fi
}
arg() { for w in $(cat /proc/cmdline); do case $w in lane.$1=*) echo "${w#*=}";; esac; done; }

echo "LANE-L2 init: $(uname -r), $(cat /proc/cmdline)"
echo "LANE-L2 boot: uptime $(cut -d' ' -f1 /proc/uptime) s"

# CPUs: the MADT must list every vCPU and Linux must bring them all up.
want=$(arg cpus)
have=$(grep -c '^processor' /proc/cpuinfo)
check cpus "want=$want have=$have online=$(cat /sys/devices/system/cpu/online)" [ "$have" = "$want" ]
echo "LANE-L2 topology: $(grep -E '^(physical id|core id|cpu cores|siblings|apicid)' /proc/cpuinfo | tr -s ' \t' ' ' | tr '\n' ';')"
check hypervisor "$(grep -o 'hypervisor' /proc/cpuinfo | head -n1)" grep -q hypervisor /proc/cpuinfo
check kvm-clock "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)" \
    grep -q kvm-clock /sys/devices/system/clocksource/clocksource0/current_clocksource

# virtio: the modules from the same kernel package; devices found through ACPI (LNRO0005).
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
acpi_devs=$(ls /sys/bus/acpi/devices 2>/dev/null | grep -c LNRO0005)
virtio_devs=$(ls /sys/bus/virtio/devices 2>/dev/null | wc -l)
echo "LANE-L2 virtio: acpi LNRO0005=$acpi_devs virtio devices=$virtio_devs"
# Where the modules sit, to read a vCPU dump's rip against (kvmm prints one on a hang).
echo "LANE-L2 modules: $(awk '{print $1 "@" $6}' /proc/modules | tr '\n' ' ')"

if [ "$(arg disk)" = 1 ]; then
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.2; done
    check virtio-blk-found "$(cat /sys/block/vda/size 2>/dev/null) sectors" [ -b /dev/vda ]
    if [ -b /dev/vda ]; then
        check mkfs "ext2 on /dev/vda" mke2fs -q /dev/vda
        check mount "" mount -t ext2 /dev/vda /mnt
        dd if=/dev/urandom of=/tmp/payload bs=4096 count=256 2>/dev/null
        want_sum=$(sha256sum /tmp/payload | cut -d' ' -f1)
        check write "1 MiB file" sh -c 'cp /tmp/payload /mnt/payload && echo kvmm > /mnt/hello && sync'
        check umount "" umount /mnt
        echo 3 > /proc/sys/vm/drop_caches
        check remount "" mount -t ext2 -o ro /dev/vda /mnt
        have_sum=$(sha256sum /mnt/payload 2>/dev/null | cut -d' ' -f1)
        check read-back "sha256 $have_sum" [ "$have_sum" = "$want_sum" -a "$(cat /mnt/hello)" = kvmm ]
        umount /mnt 2>/dev/null
    fi
fi

if [ "$(arg net)" = 1 ]; then
    # virtio-net: the device must appear as eth0 and come up; then an address
    # (lane.ip) and pings to L1's end of the TAP (lane.peer), every one answered.
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
    check virtio-net-found "$(ls /sys/class/net | tr '\n' ' ')" [ -e /sys/class/net/eth0 ]
    check virtio-net-up "mac $(cat /sys/class/net/eth0/address 2>/dev/null)" ip link set eth0 up
    ip=$(arg ip); peer=$(arg peer); pings=$(arg pings)
    check net-addr "$ip" ip addr add "$ip" dev eth0
    # bounded: -c pings one a second, -W waits for the last reply, -w caps it all
    ping -c "${pings:-3}" -W 5 -w 30 "$peer" >/tmp/ping.out 2>&1
    got=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.out)
    rtt=$(sed -n 's/.*min\/avg\/max = //p' /tmp/ping.out)
    check ping "$peer: ${got:-0}/${pings:-3} replies, rtt min/avg/max $rtt" \
        sh -c "cat /tmp/ping.out; [ '${got:-0}' = '${pings:-3}' ]"
    s=/sys/class/net/eth0/statistics
    echo "LANE-L2 eth0: rx_packets=$(cat $s/rx_packets) tx_packets=$(cat $s/tx_packets) rx_dropped=$(cat $s/rx_dropped) tx_dropped=$(cat $s/tx_dropped)"
fi

if [ $failed = 0 ]; then echo "LANE-L2 RESULT PASS"; else echo "LANE-L2 RESULT FAIL"; fi
sync
poweroff -f
sleep 5
echo "LANE-L2 poweroff did not stop the machine"
