"""Thread names set with prctl(PR_SET_NAME), as the kernel reports them."""
import threading

from kvmm.procname import TASK_COMM_LEN, set_thread_name


def name_in_thread(name: str) -> tuple[str, str]:
    """Set `name` in a new thread; return that thread's comm and the main
    thread's, from /proc."""
    seen = {}

    def body():
        set_thread_name(name)
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            seen["thread"] = f.read().rstrip("\n")

    t = threading.Thread(target=body)
    t.start()
    t.join()
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return seen["thread"], f.read().rstrip("\n")


def test_set_thread_name():
    thread, main = name_in_thread("kvmm-vcpu0")
    assert thread == "kvmm-vcpu0"
    assert main != "kvmm-vcpu0"


def test_long_names_are_cut_to_15_bytes_as_the_kernel_does():
    thread, _ = name_in_thread("firecracker-and-more")
    assert thread == "firecracker-and"
    assert len(thread) == TASK_COMM_LEN - 1
