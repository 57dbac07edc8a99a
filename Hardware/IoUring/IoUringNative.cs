using System.Runtime.InteropServices;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.IoUring;

/// <summary>Opcodes of <c>enum io_uring_op</c> that ActorBlk issues.</summary>
internal enum IoUringOp : byte
{
    Nop = 0,
    ReadV = 1,
    WriteV = 2,
    Fsync = 3,
    ReadFixed = 4,
    WriteFixed = 5,
    Fallocate = 17,
    Read = 22,
    Write = 23,
}

/// <summary><c>IORING_SETUP_*</c> flags.</summary>
[Flags]
internal enum IoUringSetupFlags : uint
{
    None = 0,
    CqSize = 1u << 3,
    SubmitAll = 1u << 7,
    CoopTaskRun = 1u << 8,

    /// <summary>
    /// <c>IORING_SETUP_TASKRUN_FLAG</c>: with COOP_TASKRUN or DEFER_TASKRUN the kernel sets
    /// <see cref="IoUringSqFlags.TaskRun"/> in the SQ ring's flags while completion work waits for
    /// the issuer to enter (5.19+).
    /// </summary>
    TaskRunFlag = 1u << 9,
    SingleIssuer = 1u << 12,
    DeferTaskRun = 1u << 13,
}

/// <summary><c>IORING_SQ_*</c> bits of the SQ ring's flags word.</summary>
[Flags]
internal enum IoUringSqFlags : uint
{
    None = 0,

    /// <summary><c>IORING_SQ_TASKRUN</c>: completion work is pending; an enter with GETEVENTS runs it.</summary>
    TaskRun = 1u << 2,
}

/// <summary><c>IORING_FEAT_*</c> bits the kernel reports at setup.</summary>
[Flags]
internal enum IoUringFeatures : uint
{
    None = 0,
    SingleMmap = 1u << 0,
    NoDrop = 1u << 1,
    SubmitStable = 1u << 2,
    FastPoll = 1u << 5,
    ExtArg = 1u << 8,
    NativeWorkers = 1u << 9,
    RegisterRegisteredRing = 1u << 13,
}

/// <summary><c>IOSQE_*</c> per-entry flags.</summary>
[Flags]
internal enum IoSqeFlags : byte
{
    None = 0,
    FixedFile = 1 << 0,
    IoLink = 1 << 2,
}

/// <summary><c>IORING_ENTER_*</c> flags.</summary>
[Flags]
internal enum IoUringEnterFlags : uint
{
    None = 0,
    GetEvents = 1u << 0,
    ExtArg = 1u << 3,
    RegisteredRing = 1u << 4,
}

/// <summary>The raw structures and system calls of io_uring (<c>&lt;linux/io_uring.h&gt;</c>), blittable and unsafe.</summary>
internal static unsafe class IoUringNative
{
    public const uint FsyncDataSync = 1;
    public const int RwfDsync = 2;

    public const long OffSqRing = 0;
    public const long OffCqRing = 0x8000000;
    public const long OffSqes = 0x10000000;

    public const uint RegisterBuffers = 0;
    public const uint RegisterFiles = 2;
    public const uint UnregisterFiles = 3;
    public const uint RegisterProbe = 8;
    public const uint RegisterRingFds = 20;
    public const uint UnregisterRingFds = 21;

    public const ushort ProbeOpSupported = 1;

    /// <summary><c>io_uring_setup(2)</c>: the ring descriptor, or -errno.</summary>
    public static int Setup(uint entries, IoUringParams* parameters) =>
        (int)LibC.Syscall(LibC.SYS_io_uring_setup, entries, (long)parameters);

    /// <summary><c>io_uring_enter(2)</c>: submitted entries, or -errno.</summary>
    public static int Enter(int fd, uint toSubmit, uint minComplete, IoUringEnterFlags flags, void* arg = null, nuint argSize = 0) =>
        (int)LibC.Syscall(LibC.SYS_io_uring_enter, fd, toSubmit, minComplete, (long)flags, (long)arg, (long)argSize);

    /// <summary><c>io_uring_register(2)</c>: the result, or -errno.</summary>
    public static int Register(int fd, uint opcode, void* arg, uint count) =>
        (int)LibC.Syscall(LibC.SYS_io_uring_register, fd, opcode, (long)arg, count);
}

/// <summary><c>struct io_sqring_offsets</c> (40 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct SqRingOffsets
{
    public uint Head;
    public uint Tail;
    public uint RingMask;
    public uint RingEntries;
    public uint Flags;
    public uint Dropped;
    public uint Array;
    public uint Resv1;
    public ulong UserAddr;
}

/// <summary><c>struct io_cqring_offsets</c> (40 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct CqRingOffsets
{
    public uint Head;
    public uint Tail;
    public uint RingMask;
    public uint RingEntries;
    public uint Overflow;
    public uint Cqes;
    public uint Flags;
    public uint Resv1;
    public ulong UserAddr;
}

/// <summary><c>struct io_uring_params</c> (120 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct IoUringParams
{
    public uint SqEntries;
    public uint CqEntries;
    public IoUringSetupFlags Flags;
    public uint SqThreadCpu;
    public uint SqThreadIdle;
    public IoUringFeatures Features;
    public uint WqFd;
    public fixed uint Resv[3];
    public SqRingOffsets SqOff;
    public CqRingOffsets CqOff;
}

/// <summary><c>struct io_uring_sqe</c> (64 bytes), with the unions ActorBlk uses named by their use.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct IoUringSqe
{
    [FieldOffset(0)]
    public IoUringOp Opcode;

    [FieldOffset(1)]
    public IoSqeFlags Flags;

    [FieldOffset(2)]
    public ushort IoPrio;

    [FieldOffset(4)]
    public int Fd;

    /// <summary>File offset.</summary>
    [FieldOffset(8)]
    public ulong Offset;

    /// <summary>Buffer or iovec address; the length of a fallocate.</summary>
    [FieldOffset(16)]
    public ulong Address;

    /// <summary>Buffer length or iovec count; the mode of a fallocate.</summary>
    [FieldOffset(24)]
    public uint Length;

    /// <summary><c>rw_flags</c> (RWF_*) or <c>fsync_flags</c>.</summary>
    [FieldOffset(28)]
    public uint OpFlags;

    [FieldOffset(32)]
    public ulong UserData;

    [FieldOffset(40)]
    public ushort BufIndex;

    [FieldOffset(42)]
    public ushort Personality;

    [FieldOffset(44)]
    public int SpliceFdIn;

    [FieldOffset(48)]
    public ulong Address3;

    [FieldOffset(56)]
    public ulong Pad;
}

/// <summary><c>struct io_uring_cqe</c> (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct IoUringCqe
{
    public ulong UserData;
    public int Result;
    public uint Flags;
}

/// <summary><c>struct io_uring_getevents_arg</c> (24 bytes), for timed waits with <c>IORING_ENTER_EXT_ARG</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct IoUringGetEventsArg
{
    public ulong SigMask;
    public uint SigMaskSize;
    public uint MinWaitMicroseconds;
    public ulong Timespec;
}

/// <summary><c>struct __kernel_timespec</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KernelTimespec
{
    public long Seconds;
    public long Nanoseconds;
}

/// <summary><c>struct io_uring_rsrc_update</c>, used to register the ring's own descriptor.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct IoUringRsrcUpdate
{
    public uint Offset;
    public uint Resv;
    public ulong Data;
}

/// <summary>Header of <c>struct io_uring_probe</c> (16 bytes), followed by <see cref="IoUringProbeOp"/> entries.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct IoUringProbeHeader
{
    public byte LastOp;
    public byte OpsLength;
    public ushort Resv;
    public fixed uint Resv2[3];
}

/// <summary><c>struct io_uring_probe_op</c> (8 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct IoUringProbeOp
{
    public byte Op;
    public byte Resv;
    public ushort Flags;
    public uint Resv2;
}
