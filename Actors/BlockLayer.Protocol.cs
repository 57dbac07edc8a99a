using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using Akka.Actor;

namespace ActorBlk.Actors;

// The guardian's protocol: the messages /user/actorblk receives and answers.

public sealed partial class BlockLayer
{
    internal sealed record AllDeviceNames : INoSerializationVerificationNeeded
    {
        public static readonly AllDeviceNames Instance = new();
    }

    /// <summary>
    /// The answer to <see cref="AllDeviceNames"/>: the devices no stacked device is built on, the
    /// local members of stacked devices, and the local queues of their remote members.
    /// </summary>
    internal sealed record DeviceNames(string[] Others, string[] Held, string[] Remote) : INoSerializationVerificationNeeded;

    /// <summary>Create a device, on <paramref name="Driver"/> when given (reply <see cref="Created"/>, or a failure). Local only.</summary>
    public sealed record Create(DeviceOptions Options, IBlockDriver? Driver = null) : INoSerializationVerificationNeeded;

    /// <summary>The device exists and serves I/O. Local only.</summary>
    public sealed record Created(BlockDevice Device) : INoSerializationVerificationNeeded;

    /// <summary>Allocate a device without registering it (reply <see cref="Created"/>, or a failure). Local only.</summary>
    public sealed record Allocate(DeviceOptions Options, IBlockDriver? Driver = null) : INoSerializationVerificationNeeded;

    /// <summary>Register an allocated device (reply <see cref="Created"/> once it serves I/O). Local only.</summary>
    public sealed record Register(string Name) : INoSerializationVerificationNeeded;

    /// <summary>Create a stacked device's placeholder (reply <see cref="Created"/>). Local only.</summary>
    public sealed record CreateStacked(string Name) : INoSerializationVerificationNeeded;

    /// <summary>Load a table into a stacked device (reply <see cref="Created"/> once it serves I/O). Local only.</summary>
    public sealed record LoadTable(string Name, StackTable Table) : INoSerializationVerificationNeeded
    {
        /// <summary>
        /// Members on other nodes, opened by <see cref="LoadTableAsync"/> (member name to handle).
        /// The guardian owns them from the moment it receives this: it closes them when the table
        /// is refused or the device is destroyed.
        /// </summary>
        internal IReadOnlyDictionary<string, ClusterBlockDevice> Opened { get; init; } = new Dictionary<string, ClusterBlockDevice>();
    }

    /// <summary>
    /// Replace the faulty leg <paramref name="Slot"/> of mirror <paramref name="Name"/> by
    /// <paramref name="Member"/> (reply <see cref="LegReplaced"/>, or a failure). Local only.
    /// </summary>
    internal sealed record ReplaceLeg(string Name, int Slot, string Member) : INoSerializationVerificationNeeded
    {
        /// <summary>The member, when it is on another node, opened by <see cref="ReplaceMirrorLegAsync"/>; the guardian owns it from the moment it receives this.</summary>
        internal ClusterBlockDevice? Opened { get; init; }
    }

    /// <summary>The leg was replaced: <paramref name="Old"/> is no leg of the mirror any more.</summary>
    internal sealed record LegReplaced(string Name, int Slot, string Old) : INoSerializationVerificationNeeded;

    /// <summary>The device cannot be destroyed: <paramref name="Holder"/> is built on it.</summary>
    public sealed record DeviceBusy(string Name, string Holder) : IActorBlkMessage;

    /// <summary>Destroy a device (reply <see cref="Destroyed"/> or <see cref="NoSuchDevice"/>).</summary>
    public sealed record Destroy(string Name) : IActorBlkMessage;

    /// <summary>
    /// A handle's dispose: destroy the device named <paramref name="Name"/> only if it is still
    /// <paramref name="Device"/> (a newer device of the same name is not the handle's); local only.
    /// </summary>
    internal sealed record DestroyHandle(string Name, IBlockDevice Device) : INoSerializationVerificationNeeded;

    /// <summary>The device is gone.</summary>
    public sealed record Destroyed(string Name, int FailedRequests) : IActorBlkMessage;

    /// <summary>No device has that name; <paramref name="Id"/> is the request id of an <see cref="Io"/> (0 otherwise).</summary>
    public sealed record NoSuchDevice(string Name, long Id = 0) : IActorBlkMessage;

    /// <summary>Asks for a device's <see cref="RequestQueueProtocol.Info"/>; the answer is that, or <see cref="NoSuchDevice"/>.</summary>
    public sealed record GetDeviceInfo(string Name) : IActorBlkQuery;

    /// <summary>Ask for the devices (reply <see cref="DeviceList"/>).</summary>
    public sealed record ListDevices : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly ListDevices Instance = new();
    }

    /// <summary>
    /// The registered devices of this node, in the order they registered (the first first; a device
    /// destroyed and created again registers anew, last), as the kernel's <c>/proc/diskstats</c>
    /// lists its disks in the order they were added.
    /// </summary>
    public sealed record DeviceList(DeviceSummary[] Devices) : IActorBlkMessage;

    /// <summary>One device.</summary>
    public sealed record DeviceSummary(string Name, string Driver, long Capacity, int LogicalBlockSize, int HardwareQueues, string Dispatch, string TagSet) : IActorBlkMessage;

    /// <summary>
    /// An I/O for a device of this node, addressed by name: the cluster's way in. The sender
    /// receives <see cref="SoftwareContextProtocol.Completed"/>, <see cref="SoftwareContextProtocol.Rejected"/> or
    /// <see cref="NoSuchDevice"/>, each with <paramref name="Id"/>. Every field is checked before
    /// anything is allocated (<c>MessageIo.Check</c>); over remoting a read or write moves at most
    /// one frame of data, and one that would take the data of remote I/O in flight on the node past
    /// <c>actorblk.remote.max-inflight-io-bytes</c> is answered at once with
    /// <see cref="SoftwareContextProtocol.Completed"/> and <c>BlockStatus.Resource</c> (retry later).
    /// </summary>
    public sealed record Io(string Device, long Id, BlockOp Op, long Offset, int Length, byte[]? Data = null, RequestFlags Flags = RequestFlags.None, int Cpu = -1) : IActorBlkMessage;
}
