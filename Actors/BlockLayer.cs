using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using Akka;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// The block layer of one actor system (an Akka extension): creates and destroys devices, owns
/// the CPU topology and the per-CPU completion workers, and hosts the guardian actor
/// (<c>/user/actorblk</c>) that supervises every device.
/// </summary>
/// <remarks>
/// Get it with <see cref="Get"/> on any actor system, or let <c>WithActorBlk</c> set it up in an
/// Akka.Hosting application. Devices are destroyed (drained) when the actor system shuts down
/// through CoordinatedShutdown.
/// </remarks>
public sealed partial class BlockLayer : IExtension
{
    /// <summary>The guardian's name under <c>/user</c>.</summary>
    public const string GuardianName = "actorblk";

    private readonly ConcurrentDictionary<string, BlockDevice> _devices = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<RequestQueue, DispatchMode> _modes = new();
    private CpuTopology? _currentTopology;
    private readonly IActorRef? _registry;
    private readonly DeviceOpener _opener;
    private string? _nbdEndpoint;
    private long _shutdownDrainTicks;
    private readonly CancellationTokenSource _stopping = new();

    /// <summary>Created by Akka through <see cref="BlockLayerProvider"/>.</summary>
    public BlockLayer(ExtendedActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        System = system;

        // Make the library defaults (dispatchers included) visible to the whole system, as Akka's own
        // modules do, so BlockLayer.Get works on a system that never loaded them.
        system.Settings.InjectTopLevelFallback(ActorBlkSettings.DefaultConfig());
        Settings = ActorBlkSettings.Create(system);
        var clustered = system.Provider is Akka.Cluster.IClusterActorRefProvider
            && system.Settings.Config.GetBoolean("actorblk.cluster.registry.enabled", true);

        // The registry signs this node's entries with the admin secret and ignores unsigned ones. A
        // secret file that exists but cannot be read stops the layer here, before anything starts,
        // with an AdminSecretException (it was taken for no secret: nothing signed or checked).
        var registryKey = clustered && RemoteSurface.ResolveSecret(system.Settings.Config, create: false) is { Length: > 0 } secret
            ? global::System.Text.Encoding.UTF8.GetBytes(secret)
            : null;
        Topology = Settings.BuildTopology();
        if (Settings.TopologySource == "system" && OperatingSystem.IsLinux() && !Directory.Exists(Settings.SysfsRoot))
        {
            // The fallback is meant for machines without sysfs; on Linux a missing directory is
            // most likely a mistyped actorblk.topology.sysfs-root, which went unremarked (an audit).
            system.Log.Warning("actorblk.topology.sysfs-root '{0}' does not exist: the block layer maps a simulated machine ({1}) and does not watch CPU hotplug", Settings.SysfsRoot, Topology.Source);
        }

        SoftIrq = new BlockSoftIrq(Topology);
        Clock = Settings.Clock == ClockSource.Scheduler ? new SchedulerBlockClock(system.Scheduler) : BlockClock.System;
        ClusterDevices = new ClusterDevices(clustered);
        Guardian = system.ActorOf(BlockLayerActor.Props(this), GuardianName);

        // The guardian must never stop while the node runs: if it does, the node serves nothing,
        // so it fails loudly and shuts down (README, "Security").
        system.SystemActorOf(Akka.Actor.Props.Create(() => new GuardianWatchdog(this)), GuardianName + "-watchdog");

        // A member that quarantined this node removed it for good: the node downs itself at once
        // instead of serving on its own side until its split-brain resolver decides (README, "Cluster").
        if (system.Provider is Akka.Cluster.IClusterActorRefProvider)
        {
            system.SystemActorOf(QuarantineWatcher.Props(this), QuarantineWatcher.ActorName);
        }

        var shutdown = CoordinatedShutdown.Get(system);

        // Waits of the start-up (a cluster to join, a stacked device's member to appear) end when
        // the node is told to stop, so SIGTERM stops a node that never finished starting.
        shutdown.AddTask(CoordinatedShutdown.PhaseBeforeServiceUnbind, "actorblk-stopping", () =>
        {
            _stopping.Cancel();
            return Task.FromResult(Done.Instance);
        });
        shutdown.AddTask(CoordinatedShutdown.PhaseServiceStop, "actorblk-destroy-devices", async () =>
        {
            // Every outstanding I/O must complete (with Offline if need be) while the actors that
            // carry it still run: the phase is cut off after its timeout and the system then stops
            // the actors, so teardown at shutdown drains for a quarter of the phase at most
            // instead of the full drain timeout, and the devices are torn down together: those
            // no stacked device is built on first, then the members (DestroyAllDevicesAsync).
            var phase = shutdown.Timeout(CoordinatedShutdown.PhaseServiceStop);
            var drain = TimeSpan.FromTicks(Math.Min(Settings.DrainTimeout.Ticks, phase.Ticks / 4));
            Volatile.Write(ref _shutdownDrainTicks, Math.Max(drain.Ticks, TimeSpan.FromMilliseconds(100).Ticks));
            await DestroyAllDevicesAsync().ConfigureAwait(false);
            return Done.Instance;
        });
        // A thread that cannot be pinned to its CPUs keeps running unpinned; say so once per thread.
        Action<string> pinFailed = message => system.Log.Warning("{0}", message);
        CpuAffinity.PinFailed += pinFailed;
        system.WhenTerminated.ContinueWith(_ =>
        {
            _stopping.Cancel();
            CpuAffinity.PinFailed -= pinFailed;
            SoftIrq.Dispose();
        }, TaskScheduler.Default);

        // The cluster-wide registry (README, "Cluster"): on every cluster member unless turned off.
        var registry = system.Settings.Config.GetConfig("actorblk.cluster.registry");
        _opener = new DeviceOpener(this, registry?.GetTimeSpan("remote-check-interval", TimeSpan.FromSeconds(1)) ?? TimeSpan.FromSeconds(1));
        MemberWait = registry?.GetTimeSpan("member-wait", TimeSpan.FromSeconds(30)) ?? TimeSpan.FromSeconds(30);
        RemoteTlsCa = registry?.GetString("tls-ca", string.Empty) is { Length: > 0 } ca ? ca : null;
        if (ClusterDevices.IsEnabled)
        {
            var poll = registry?.GetTimeSpan("poll-interval", TimeSpan.FromSeconds(1)) ?? TimeSpan.FromSeconds(1);
            // Without a key at the start, the secret is looked for again at each poll, as the seal does.
            var later = new Serialization.ClusterSeal.KeySource(system.Settings.Config);
            _registry = system.ActorOf(DeviceRegistryActor.Props(this, poll, registryKey, () => later.Key), DeviceRegistryActor.ActorName);
            shutdown.AddTask(CoordinatedShutdown.PhaseBeforeClusterShutdown, "actorblk-withdraw-devices", async () =>
            {
                try
                {
                    await _registry.Ask<DeviceRegistryActor.Withdrawn>(DeviceRegistryActor.Withdraw.Instance, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
                }
                catch (AskTimeoutException)
                {
                    // The other members prune this node's entries when it is removed.
                }

                return Done.Instance;
            });
        }
    }

    /// <summary>
    /// Every device of the cluster (name, owner node, capacity, block size, hardware queues,
    /// read-only, state, NBD endpoint) as this node's registry sees it: a snapshot, name resolution
    /// (<c>name</c> or <c>name@host:port</c>) and a way to watch changes. Empty when the actor
    /// system is not a cluster member.
    /// </summary>
    public ClusterDevices ClusterDevices { get; }

    /// <summary>
    /// Cancelled when the node begins to shut down (coordinated shutdown's first phase) or its
    /// actor system terminates: start-up waits (the cluster to join, a stacked device's member on
    /// another node) pass it so that a node told to stop does not wait for them.
    /// </summary>
    public CancellationToken Stopping => _stopping.Token;

    /// <summary>The NBD server address this node's devices are exported at (<c>nbd://host:port</c>), if any.</summary>
    public string? NbdEndpoint => Volatile.Read(ref _nbdEndpoint);

    /// <summary>
    /// Sets the address of this node's NBD server (<c>nbd://host:port</c>; null: none), which the
    /// cluster registry publishes for each device as <c>nbd://host:port/&lt;name&gt;</c>.
    /// </summary>
    public void SetNbdEndpoint(string? endpoint)
    {
        Volatile.Write(ref _nbdEndpoint, string.IsNullOrWhiteSpace(endpoint) ? null : endpoint);
        _registry?.Tell(DeviceRegistryActor.LocalDevicesChanged.Instance);
    }

    /// <summary>The actor system.</summary>
    public ExtendedActorSystem System { get; }

    /// <summary>The <c>actorblk</c> settings.</summary>
    public ActorBlkSettings Settings { get; }

    /// <summary>
    /// How long unregistering a device waits for its I/O to drain before failing the rest: the
    /// drain timeout, or less once the actor system shuts down (see the shutdown task).
    /// </summary>
    // How long creating, allocating, registering a device or loading a table waits for the
    // guardian: behind a teardown it may wait up to a drain, and a device's own start (opening a
    // file, connecting to a member) takes its time, so more than the drain: with drain-timeout
    // as the limit, drain-timeout = 100ms failed a node's start creating its first device (an
    // outside audit).
    private TimeSpan ControlTimeout => Settings.DrainTimeout + TimeSpan.FromSeconds(30);

    internal TimeSpan UnregisterDrainTimeout =>
        Volatile.Read(ref _shutdownDrainTicks) is var ticks and > 0 ? TimeSpan.FromTicks(ticks) : Settings.DrainTimeout;

    /// <summary>The CPU topology devices are mapped on at start.</summary>
    public CpuTopology Topology { get; }

    /// <summary>The CPU topology now: the one the last hotplug event left (the start one before any).</summary>
    public CpuTopology CurrentTopology => Volatile.Read(ref _currentTopology) ?? Topology;

    /// <summary>The guardian actor, <c>/user/actorblk</c>.</summary>
    public IActorRef Guardian { get; }

    /// <summary>Every device currently registered.</summary>
    public IReadOnlyCollection<IBlockDevice> Devices => _devices.Values.ToArray();

    /// <summary>
    /// Why the block layer failed (its guardian or one of its actors stopped unexpectedly), or null.
    /// A failed layer has run coordinated shutdown with <see cref="NodeFailed"/>; a host exits non-zero.
    /// </summary>
    public string? FailureReason => Volatile.Read(ref _failureReason);

    private string? _failureReason;

    /// <summary>
    /// The member of the cluster that quarantined this node (Akka.Remote's
    /// <c>ThisActorSystemQuarantinedEvent</c>), or null. Such a node was removed by the others
    /// while it did not answer and has downed itself: coordinated shutdown runs with
    /// <see cref="CoordinatedShutdown.ClusterDowningReason"/>, and a host exits non-zero.
    /// </summary>
    public Address? QuarantinedBy => Volatile.Read(ref _quarantinedBy);

    private Address? _quarantinedBy;

    internal void RecordQuarantine(Address by) => Interlocked.CompareExchange(ref _quarantinedBy, by, null);

    internal BlockSoftIrq SoftIrq { get; }

    internal BlockClock Clock { get; }

    /// <summary>The block layer of <paramref name="system"/>, created on first use.</summary>
    public static BlockLayer Get(ActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        return system.WithExtension<BlockLayer, BlockLayerProvider>();
    }

    /// <summary>
    /// Creates a device and completes when it is registered and serving I/O.
    /// </summary>
    /// <remarks>
    /// The token of this and the other calls that change the node (allocate, register, create a
    /// stacked device, load a table, destroy) is honoured until the request reaches the node: a
    /// token cancelled before changes nothing and throws <see cref="OperationCanceledException"/>.
    /// Once sent, the change goes through and the call returns its outcome, so a caller never
    /// holds an exception for a device that was created or removed anyway.
    /// </remarks>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    public async Task<IBlockDevice> CreateDeviceAsync(DeviceOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        var created = await AskAsync<Created>(Guardian, new Create(options), ControlTimeout, CancellationToken.None).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>
    /// Creates a device on a driver of the application's own (any <see cref="IBlockDriver"/>),
    /// with <paramref name="options"/> for everything else (<c>driver</c> and <c>path</c> are
    /// ignored; fault options still wrap it). The layer owns the driver from now on and disposes
    /// it with the device; if creation fails it is disposed at once.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled before the request was sent; the driver is disposed.</exception>
    /// <exception cref="ObjectDisposedException">The layer's actor system has terminated; the driver is disposed.</exception>
    public async Task<IBlockDevice> CreateDeviceAsync(DeviceOptions options, IBlockDriver driver, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(driver);
        try
        {
            (options with { Driver = "null", Path = null }).Validate();
        }
        catch
        {
            driver.Dispose();
            throw;
        }

        if (cancellationToken.IsCancellationRequested || System.WhenTerminated.IsCompleted)
        {
            // Nothing is sent, so nothing else will dispose the driver (an outside driver audit
            // found it left undisposed both ways).
            driver.Dispose();
            cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
            ThrowIfTerminated();
        }

        var created = await AskAsync<Created>(Guardian, new Create(options, driver), ControlTimeout, CancellationToken.None).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>
    /// Allocates a device without registering it (phases 1 and 2 of §10, no registration): its
    /// driver, tag set and queue exist, but nothing per CPU or per hardware queue is started (no
    /// actors, no dispatch threads, no attribute tree) and I/O fails with
    /// <see cref="InvalidRequestReason.NotRegistered"/>. Register it with
    /// <see cref="RegisterDeviceAsync"/>, or destroy it (cheaply) with <see cref="DestroyDeviceAsync"/>.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    public async Task<IBlockDevice> AllocateDeviceAsync(DeviceOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        var created = await AskAsync<Created>(Guardian, new Allocate(options), ControlTimeout, CancellationToken.None).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>Registers a device made by <see cref="AllocateDeviceAsync"/>; completes when it serves I/O.</summary>
    /// <exception cref="KeyNotFoundException">No device has that name.</exception>
    /// <exception cref="InvalidOperationException">It is registered already, or it is a stacked device.</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    public async Task<IBlockDevice> RegisterDeviceAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        var reply = await AskAsync<object>(Guardian, new Register(name), ControlTimeout, CancellationToken.None).ConfigureAwait(false);
        return reply switch
        {
            Created c => c.Device,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// Creates a stacked device as device-mapper does (<c>dmsetup create</c> without a table): a
    /// placeholder queue under <paramref name="name"/>, neither bio-based nor multi-queue until the
    /// first <see cref="LoadTableAsync"/>. Its I/O fails with NotRegistered until then.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The name is taken or invalid.</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    public async Task<IBlockDevice> CreateStackedDeviceAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        var created = await AskAsync<Created>(Guardian, new CreateStacked(name), ControlTimeout, CancellationToken.None).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>
    /// Loads a table into a stacked device. The first table decides the device's type and registers
    /// it; a later one replaces the target while the device is frozen (in-flight I/O drains first).
    /// Member devices cannot be destroyed while a stacked device uses them. A member that is not a
    /// device of this node (<c>name@host:port</c>, or a plain name only another node has) is opened
    /// with <see cref="OpenAsync(string, CancellationToken)"/>, waiting up to
    /// <c>actorblk.cluster.registry.member-wait</c> for the cluster's registry to show it; the
    /// stacked device holds that handle and closes it when it is destroyed.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No device has that name.</exception>
    /// <exception cref="DeviceOptionsException">The table is refused (unknown, ambiguous, unreachable or busy member, a member named twice or by two of its names, bad geometry).</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    public async Task<IBlockDevice> LoadTableAsync(string name, StackTable table, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(table);
        if (table.MemberNames is null || table.MemberNames.Any(m => string.IsNullOrEmpty(m)))
        {
            throw new DeviceOptionsException(name, "table", "a member name is missing (null or empty).");
        }

        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        var opened = await OpenMembersAsync(name, table, cancellationToken).ConfigureAwait(false);
        // From here the guardian owns the opened members: it closes them if the table is refused.
        var reply = await AskAsync<object>(Guardian, new LoadTable(name, table) { Opened = opened }, ControlTimeout, CancellationToken.None).ConfigureAwait(false);

        return reply switch
        {
            Created c => c.Device,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// Replaces the faulty leg in slot <paramref name="slot"/> of the mirror <paramref name="name"/>
    /// by the device <paramref name="member"/> while the mirror runs (md's <c>--remove</c> of the
    /// faulty member, then <c>--add</c> of a new one): a device of this node, or of another node
    /// (<c>name@host:port</c>, or a plain name only another node has, opened as a table's remote
    /// member is). The mirror claims the new device exclusively and holds it (it cannot be
    /// destroyed while it is a leg), writes it a superblock of this mirror and copies its whole
    /// data area to it in the background (<see cref="MirrorTarget.ReplaceLegAsync"/>). The old
    /// device is released: a device of this node can be destroyed again, another node's handle
    /// is closed (its local queue is gone when this returns).
    /// </summary>
    /// <returns>The name of the device that was in the slot.</returns>
    /// <exception cref="KeyNotFoundException">No device has the name <paramref name="name"/>.</exception>
    /// <exception cref="DeviceOptionsException">The member is unknown, unreachable, the mirror itself or stacked over it, or claimed by another stacked device (<c>members</c>; then its <see cref="Exception.InnerException"/> is a <see cref="DeviceBusyException"/> naming the holder).</exception>
    /// <exception cref="InvalidOperationException">The device is no mirror, is being removed or assembled, or a replacement of its legs runs; the slot does not exist or is not faulty; the member is a leg of the mirror already, or cannot carry it (read-only, too small: then a <see cref="MirrorLegTooSmallException"/>, another block size, weaker limits).</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    /// <exception cref="AskTimeoutException">The swap did not end within the drain timeout plus 30 s: it waits for the mirror's I/O in flight, which on a remote leg may take up to its I/O timeout and retries. It may still end later; <c>md/dev-&lt;leg&gt;/state</c> tells.</exception>
    public async Task<string> ReplaceMirrorLegAsync(string name, int slot, string member, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (string.IsNullOrEmpty(member))
        {
            throw new DeviceOptionsException(name, "members", "the new member's name is missing (null or empty).");
        }

        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        var opened = await OpenMembersAsync(name, StackTable.Linear(member), cancellationToken).ConfigureAwait(false);
        // From here the guardian owns the opened member: it closes it if the replacement is refused.
        var reply = await AskAsync<object>(Guardian, new ReplaceLeg(name, slot, member) { Opened = opened.Values.FirstOrDefault() }, ControlTimeout, CancellationToken.None).ConfigureAwait(false);
        return reply switch
        {
            LegReplaced replaced => replaced.Old,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// Creates a device, blocking the calling thread until it is registered. Prefer
    /// <see cref="CreateDeviceAsync(DeviceOptions, CancellationToken)"/> in asynchronous code.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    /// <exception cref="BlockLayerStoppingException">The node has begun to shut down; nothing changed.</exception>
    public IBlockDevice CreateDevice(DeviceOptions options) =>
        Task.Run(() => CreateDeviceAsync(options)).GetAwaiter().GetResult();

    /// <summary>
    /// Unregisters and destroys a device: in-flight I/O drains (or fails with Offline after the
    /// drain timeout, or at once when the device is lost meanwhile: a reset that did not end within
    /// a second, a device being reopened), later I/O fails with Offline. Completes with the number
    /// of requests failed (a request carries every bio merged into it: adjacent writes may count once).
    /// Destroys of one device made while its removal runs join it and all return that count.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No device has that name.</exception>
    /// <exception cref="DeviceBusyException">A stacked device is built on it (EBUSY).</exception>
    /// <exception cref="TimeoutException">The removal did not finish in time; the name stays taken until it does.</exception>
    public async Task<int> DestroyDeviceAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        return await DestroyAsync(new Destroy(name), name).ConfigureAwait(false) switch
        {
            Destroyed d => d.FailedRequests,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            var reply => throw Unexpected(name, reply),
        };
    }

    /// <summary>
    /// Sends a destroy (<see cref="Destroy"/>, or a handle's <see cref="DestroyHandle"/>) and waits
    /// for its removal: teardown waits up to the drain timeout for requests to drain, and as long
    /// again for the stragglers it failed to arrive (RequestQueue.ShutdownAsync), then releases
    /// the device.
    /// </summary>
    private async Task<object> DestroyAsync(object destroy, string name)
    {
        var limit = (2 * Settings.DrainTimeout) + TimeSpan.FromSeconds(10);
        try
        {
            return await AskAsync<object>(Guardian, destroy, limit, CancellationToken.None).ConfigureAwait(false);
        }
        catch (AskTimeoutException ex)
        {
            throw new TimeoutException($"Destroying device '{name}' did not finish within {limit.TotalSeconds} s; it is still being removed and its name stays taken until it is.", ex);
        }
    }

    // A destroy's reply that is neither done nor "no such device".
    private static Exception Unexpected(string name, object reply) => reply is DeviceBusy busy
        ? new DeviceBusyException(name, busy.Holder)
        : new InvalidOperationException($"Unexpected reply {reply}.");

    /// <summary>
    /// Asks an actor of this node, failing at once with <see cref="ObjectDisposedException"/> when
    /// the node's actor system has terminated or terminates during the wait (an outside audit: a
    /// create after shutdown failed with an ask timeout after 5 s, a destroy after 70 s).
    /// </summary>
    private async Task<T> AskAsync<T>(ICanTell target, object message, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ThrowIfTerminated();
        var ask = target.Ask<T>(message, timeout, cancellationToken);
        if (await Task.WhenAny(ask, System.WhenTerminated).ConfigureAwait(false) != ask)
        {
            ask.ObserveFault();
            ThrowIfTerminated();
        }

        return await ask.ConfigureAwait(false);
    }

    private void ThrowIfTerminated()
    {
        if (System.WhenTerminated.IsCompleted)
        {
            throw new ObjectDisposedException(nameof(BlockLayer), $"The actor system '{System.Name}' of this block layer has terminated.");
        }
    }

    /// <summary>
    /// A device handle's <see cref="IAsyncDisposable.DisposeAsync"/>: destroys its device, unless
    /// it is gone already (destroyed by name, or a node shutdown) or the name now belongs to a newer
    /// device (an outside audit saw a stale handle's dispose destroy its successor); both are no-ops.
    /// </summary>
    /// <exception cref="DeviceBusyException">A stacked device is built on it (EBUSY).</exception>
    internal async ValueTask DisposeHandleAsync(string name, IBlockDevice device)
    {
        object reply;
        try
        {
            reply = await DestroyAsync(new DestroyHandle(name, device), name).ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            return; // the node stopped, and its devices with it
        }

        if (reply is not (Destroyed or NoSuchDevice))
        {
            throw Unexpected(name, reply);
        }
    }

    /// <summary>
    /// The request-queue actor's summary of a device: its health, the timeouts, device errors and
    /// resets supervision has seen. Only a registered device has that actor: one allocated
    /// (<see cref="AllocateDeviceAsync"/>) and not yet registered is reported as no device.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No registered device has that name.</exception>
    public async Task<RequestQueueProtocol.Info> GetDeviceInfoAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        var reply = await AskAsync<object>(Guardian, new GetDeviceInfo(name), TimeSpan.FromSeconds(10), cancellationToken).ConfigureAwait(false);
        return reply switch
        {
            RequestQueueProtocol.Info info => info,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// Sends a CPU hotplug event to the topology actor: every registered queue is frozen, drained,
    /// re-mapped and unfrozen before the answer comes.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The CPU is not present.</exception>
    /// <exception cref="InvalidOperationException">The CPU is the last one online.</exception>
    /// <exception cref="TimeoutException">The remap did not end within the drain timeout plus 10 s; it goes on.</exception>
    /// <exception cref="ObjectDisposedException">The node's actor system has terminated, or the node began to stop during the remap (the event was abandoned, nothing changed).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled before the event was sent (nothing changed); once sent, the event goes through and the call returns its outcome.</exception>
    public async Task<CpuTopologyProtocol.TopologyChanged> SetCpuOnlineAsync(int cpu, bool online, CancellationToken cancellationToken = default)
    {
        // Through the guardian, which forwards it to its topology actor (the guardian's mailbox
        // exists at once; the child only once the guardian has started).
        object message = online ? new CpuTopologyProtocol.CpuOnline(cpu) : new CpuTopologyProtocol.CpuOffline(cpu);
        var limit = Settings.DrainTimeout + TimeSpan.FromSeconds(10);
        cancellationToken.ThrowIfCancellationRequested(); // see CreateDeviceAsync: honoured until the request is sent
        try
        {
            return await AskAsync<CpuTopologyProtocol.TopologyChanged>(Guardian, message, limit, CancellationToken.None).ConfigureAwait(false);
        }
        catch (AskTimeoutException ex)
        {
            throw new TimeoutException($"CPU {cpu} {(online ? "online" : "offline")}: the remap did not answer within {limit.TotalSeconds} s (a device it freezes is still draining); it goes on, and the topology changes when it ends.", ex);
        }
    }

    /// <summary>The device named <paramref name="name"/>, if it exists (null when it returns false).</summary>
    public bool TryGetDevice(string name, [MaybeNullWhen(false)] out IBlockDevice device)
    {
        if (_devices.TryGetValue(name, out var found))
        {
            device = found;
            return true;
        }

        device = null;
        return false;
    }

    /// <summary>
    /// Records that the layer failed (an actor it cannot serve without stopped), logs it at error
    /// level and runs coordinated shutdown with <see cref="NodeFailed"/>. The first reason wins.
    /// </summary>
    internal void Fail(string reason)
    {
        if (Interlocked.CompareExchange(ref _failureReason, reason, null) is not null)
        {
            return;
        }

        System.Log.Error("ActorBlk failed: {Reason}; the node serves nothing and shuts down", reason);
        // The registry says so at once: the nodes using its devices take their loss for a failure.
        _registry?.Tell(DeviceRegistryActor.LocalDevicesChanged.Instance);
        _ = CoordinatedShutdown.Get(System).Run(NodeFailed.Instance);
    }

    /// <summary>The coordinated-shutdown reason of a failed block layer (<see cref="FailureReason"/>).</summary>
    public sealed class NodeFailed : CoordinatedShutdown.Reason
    {
        /// <summary>The instance.</summary>
        public static readonly NodeFailed Instance = new();

        private NodeFailed()
        {
        }

        /// <inheritdoc />
        public override int ExitCode => 70;
    }

    // Watches the guardian from outside /user: its stop outside a shutdown fails the layer.
    private sealed class GuardianWatchdog : ReceiveActor
    {
        public GuardianWatchdog(BlockLayer layer)
        {
            Context.Watch(layer.Guardian);
            Receive<Terminated>(t =>
            {
                if (CoordinatedShutdown.Get(Context.System).ShutdownReason is null)
                {
                    layer.Fail($"the guardian {t.ActorRef.Path} stopped unexpectedly");
                }

                Context.Stop(Self);
            });
        }
    }

    internal void PublishTopology(CpuTopology topology) => Volatile.Write(ref _currentTopology, topology);

    internal DispatchMode ModeOf(RequestQueue queue) => _modes.TryGetValue(queue, out var mode) ? mode : DispatchMode.Ring;

    internal void Track(BlockDevice device, DispatchMode mode) => _modes[device.Queue] = mode;

    internal void Publish(BlockDevice device)
    {
        _devices[device.Name] = device;
        _registry?.Tell(DeviceRegistryActor.LocalDevicesChanged.Instance);
    }

    internal void Forget(string name)
    {
        if (_devices.TryRemove(name, out var device))
        {
            _modes.TryRemove(device.Queue, out _);
            _registry?.Tell(DeviceRegistryActor.LocalDevicesChanged.Instance);
            try
            {
                DeviceForgotten?.Invoke(device);
            }
#pragma warning disable CA1031 // A listener's failure must not stop the destroy from being answered.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                System.Log.Warning(ex, "A listener of destroyed devices failed for {0}", name);
            }
        }
    }

    /// <summary>A device was destroyed (or failed while registering): its queue has drained and is gone.</summary>
    internal event Action<BlockDevice>? DeviceForgotten;

    // Every device the guardian knows, registered or not; stacked devices go before the devices
    // they are built on (a busy member waits for the next pass).
    private async Task DestroyAllDevicesAsync()
    {
        if (FailureReason is not null)
        {
            // The guardian may be gone; its children (the devices) stopped with it.
            return;
        }

        // The members of stacked devices after the rest, as md arrays stop before their members,
        // and the local queues of remote members last: a mirror's remote leg is a device of its
        // own (the handle's local queue), which the mirror does not hold, and torn down with the
        // mirror it could go first, so the mirror logged the leg faulty while its node stopped (a
        // cluster audit). Everything else goes in the first wave, as before; the last takes
        // whatever is left then (remote legs, devices a failed or busy destroy left, devices that
        // appeared meanwhile).
        var names = await AskAsync<DeviceNames>(Guardian, AllDeviceNames.Instance, TimeSpan.FromSeconds(30), CancellationToken.None).ConfigureAwait(false);
        try
        {
            await DestroyTogetherAsync(names.Others).ConfigureAwait(false);
            await DestroyTogetherAsync(names.Held).ConfigureAwait(false);
        }
        finally
        {
            var left = await AskAsync<DeviceNames>(Guardian, AllDeviceNames.Instance, TimeSpan.FromSeconds(30), CancellationToken.None).ConfigureAwait(false);
            await DestroyTogetherAsync([.. left.Others, .. left.Held, .. left.Remote]).ConfigureAwait(false);
        }
    }

    private async Task DestroyTogetherAsync(string[] names)
    {
        var left = new List<string>(names);
        while (left.Count > 0)
        {
            // Devices are torn down together, so shutdown takes one drain, not one per device.
            var busy = new ConcurrentBag<string>();
            await Task.WhenAll(left.Select(async name =>
            {
                try
                {
                    await DestroyDeviceAsync(name).ConfigureAwait(false);
                }
                catch (KeyNotFoundException)
                {
                    // Destroyed concurrently.
                }
                catch (DeviceBusyException)
                {
                    busy.Add(name);
                }
                catch (Exception ex) when (ex is TimeoutException or InvalidOperationException)
                {
                    // One device that does not go (its removal still runs, or an unexpected
                    // reply) must not keep the others from going.
                    System.Log.Warning("Destroying {0} at shutdown: {1}", name, ex.Message);
                }
            })).ConfigureAwait(false);

            if (busy.Count == left.Count)
            {
                break;
            }

            left = [.. busy];
        }
    }
}

/// <summary>Creates the <see cref="BlockLayer"/> extension.</summary>
public sealed class BlockLayerProvider : ExtensionIdProvider<BlockLayer>
{
    /// <inheritdoc />
    public override BlockLayer CreateExtension(ExtendedActorSystem system) => new(system);
}
