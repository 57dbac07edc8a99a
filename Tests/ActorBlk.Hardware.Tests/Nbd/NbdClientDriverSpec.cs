using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The NBD client driver (<c>driver = nbd</c>): a device whose data lives on an NBD server, one
/// hardware queue per connection, against our own export and against nbdkit.
/// </summary>
public sealed class NbdClientDriverSpec
{
    private static async Task ExerciseAsync(IBlockDevice device, long size)
    {
        Assert.Equal(size, device.Capacity);
        var data = Enumerable.Range(0, 64 << 10).Select(i => (byte)(i * 31 + 7)).ToArray();
        await device.WriteAsync(1 << 20, data, ActorBlk.Hardware.Requests.RequestFlags.Fua);
        var back = new byte[data.Length];
        await device.ReadAsync(1 << 20, back);
        Assert.Equal(data, back);
        await device.FlushAsync();
        await device.WriteZeroesAsync(1 << 20, 4096);
        await device.DiscardAsync((1 << 20) + 4096, 4096);
        await device.ReadAsync(1 << 20, back);
        Assert.All(back.AsSpan(0, 8192).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(data.AsSpan(8192).ToArray(), back.AsSpan(8192).ToArray());

        // Many in flight at once over every connection (each connection's limit is its tag depth).
        var tasks = Enumerable.Range(0, 256).Select(async i =>
        {
            var block = Enumerable.Repeat((byte)i, 4096).ToArray();
            await device.WriteAsync((long)i * 4096, block, cpu: i % 2);
            var read = new byte[4096];
            await device.ReadAsync((long)i * 4096, read, cpu: (i + 1) % 2);
            Assert.All(read, b => Assert.Equal((byte)i, b));
        });
        await Task.WhenAll(tasks);
        var error = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.ReadAsync(size, new byte[4096]));
        Assert.Equal(InvalidRequestReason.OutOfRange, error.Reason);
    }

    // An option the server refuses is named with what it means for this client (it was the bare
    // reply name, "ErrUnknown"; an outside audit).
    [Fact]
    public async Task An_export_the_server_does_not_offer_is_refused_saying_so()
    {
        await using var fx = NbdExportFixture.Start();
        var refused = Assert.ThrowsAny<IOException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse(fx.Uri("nosuch")) }, "remote0"));
        Assert.Contains("ErrUnknown (the server does not offer that export)", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Against_our_own_export_with_two_connections_reads_and_writes_the_served_device()
    {
        await using var fx = NbdExportFixture.Start();
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "remote0", Driver = "nbd", Uri = fx.Uri("mem0"), Connections = 2, HwQueueDepth = 32 }, CpuTopology.Simulated(2));
        Assert.Equal(2, device.Queue.HardwareContexts.Count);
        Assert.Equal(2, fx.Server.ConnectionCount);
        Assert.Equal("nbd", device.Queue.Driver.Kind);
        await ExerciseAsync(device, NbdExportFixture.MemSize);

        // What went over NBD is on the served device.
        var direct = new byte[4096];
        await fx.Mem.ReadAsync(100 * 4096, direct);
        Assert.All(direct, b => Assert.Equal(100, b));

        var ro = devices.Create(new DeviceOptions { Name = "remote1", Driver = "nbd", Uri = fx.Uri("ro0") }, CpuTopology.Simulated(2));
        Assert.True(ro.IsReadOnly);
        Assert.Equal(InvalidRequestReason.ReadOnly, (await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await ro.WriteAsync(0, new byte[512]))).Reason);
    }

    // One connection per hardware queue, and the hardware queues are capped at the possible CPUs
    // (blk-mq's nr_cpu_ids cap): the two asked past them were opened and never carried I/O (the
    // driver does not fall back to another connection, as Linux's find_fallback does).
    [Fact]
    public async Task Connections_above_the_possible_cpus_are_not_opened()
    {
        await using var fx = NbdExportFixture.Start();
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "remote0", Driver = "nbd", Uri = fx.Uri("mem0"), Connections = 4 }, CpuTopology.Simulated(2));
        Assert.Equal(2, device.Queue.HardwareContexts.Count);
        Assert.Equal(2, fx.Server.ConnectionCount);
        Assert.Contains("2 connection(s)", device.Queue.Driver.Description, StringComparison.Ordinal);
    }

    // REQ_NOUNMAP on write-zeroes goes out as NBD_CMD_FLAG_NO_HOLE (as Linux's nbd driver sends
    // it), so the served memory device keeps the range allocated; without it the pages are freed.
    [Fact]
    public async Task Write_zeroes_with_no_unmap_is_sent_with_no_hole()
    {
        await using var fx = NbdExportFixture.Start();
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "remote0", Driver = "nbd", Uri = fx.Uri("mem0") }, CpuTopology.Simulated(2));
        var map = (ActorBlk.Hardware.Drivers.IAllocationMap)fx.Mem.Queue.Driver;
        var data = Enumerable.Repeat((byte)0x42, 65536).ToArray();
        await device.WriteAsync(1 << 20, data);
        await device.WriteAsync(2 << 20, data);
        Assert.Equal(ActorBlk.Hardware.Requests.BlockStatus.Ok, await device.ExecuteAsync(ActorBlk.Hardware.Requests.BlockOp.WriteZeroes, 1 << 20, 65536, default, ActorBlk.Hardware.Requests.RequestFlags.NoUnmap));
        await device.WriteZeroesAsync(2 << 20, 65536);

        Assert.True(map.TryGetExtent(1 << 20, 65536, out var kept, out var allocated));
        Assert.Equal((65536L, true), (kept, allocated));
        Assert.True(map.TryGetExtent(2 << 20, 65536, out var freed, out allocated));
        Assert.Equal((65536L, false), (freed, allocated));
        var back = new byte[65536];
        await device.ReadAsync(1 << 20, back);
        Assert.All(back, b => Assert.Equal(0, b));
    }

    // A request that raced into a connection as it died, after the queue had gone offline and
    // failed the requests in flight, waited for a reply that could not come, its timer reset for
    // ever (the NBD driver's timeout only closed the connection). Once no connection can come back
    // (offline or retired) the timeout fails it, as Linux's nbd_xmit_timeout does. (A first
    // version scanned before the receiver had marked the connection dead, and failed once in CI.)
    [Fact]
    public async Task A_request_left_in_a_dead_connection_of_an_offline_queue_is_failed_by_its_timeout()
    {
        await using var devices = new RingDevices(2);
        await using var holding = HoldingServer.Start(devices, "held0", "remote0");
        var remote = holding.Remote;
        var read = remote.ExecuteAsync(ActorBlk.Hardware.Requests.BlockOp.Read, 0, 4096, new byte[4096]).AsTask();
        await Condition.EventuallyAsync(() => holding.Held == 1 && holding.Server.InFlight == 1, "the read reaches the server, which holds it");

        // The race's outcome, set up directly: the queue is offline with the read still in flight,
        // and the read's connection is gone.
        var driver = (NbdClientDriver)remote.Queue.Driver;
        remote.Queue.SetOffline(failInFlight: false);
        driver.Retire("the spec gives it up");
        Assert.False(read.IsCompleted);

        // Retire shuts the socket down; the connection is dead once its receiver has seen that
        // (this harness has no supervision, so nothing else touches the read meanwhile).
        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "the killed connection is dead");

        // Its deadline long past: the scan calls the driver's timeout, which fails it.
        remote.Queue.HardwareContexts[0].ScanTimeouts(long.MaxValue, driver);
        Assert.Equal(ActorBlk.Hardware.Requests.BlockStatus.Offline, await read.WaitAsync(Condition.Timeout));
        Assert.Equal(0L, remote.Queue.DoubleCompletions);
    }

    // An NBD device (io_timeout 1 s) on our own server, whose device holds every request until the
    // spec ends. (Held 3 s by a timer-mode device, the read was in flight on the server for 3 s
    // only: a loaded machine that saw it late, or ran the scan after it, found it answered.)
    private sealed class HoldingServer : IAsyncDisposable
    {
        private readonly ScriptedDriver _driver;
        private readonly BlockDevice _device;
        private readonly BlockSoftIrq _softIrq;

        private HoldingServer(ScriptedDriver driver, BlockDevice device, BlockSoftIrq softIrq, NbdServer server, BlockDevice remote)
        {
            (_driver, _device, _softIrq, Server, Remote) = (driver, device, softIrq, server, remote);
        }

        public NbdServer Server { get; }

        public BlockDevice Remote { get; }

        /// <summary>Requests the server submitted that its device holds.</summary>
        public int Held => _driver.InFlight.Count;

        public static HoldingServer Start(RingDevices devices, string held, string remote)
        {
            var (driver, device, softIrq) = NbdProtocolRulesSpec.HeldDevice(held);
            var server = NbdServer.Start(new NbdDeviceList([device]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0), ShutdownGrace = TimeSpan.Zero });
            var nbd = devices.Create(new DeviceOptions { Name = remote, Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/{held}", IoTimeoutMs = 1000 }, CpuTopology.Simulated(2));
            return new HoldingServer(driver, device, softIrq, server, nbd);
        }

        // The held requests complete, then the server stops (it waits for them) and the device goes.
        // One arriving after that completes at once, or the stop would wait for it for ever.
        public async ValueTask DisposeAsync()
        {
            _driver.CompleteInline = true;
            _driver.CompleteAll();
            await Server.DisposeAsync();
            await _device.DisposeAsync();
            _softIrq.Dispose();
        }
    }

    // A verifying helper: a request that timed out made the driver close its connection, and the
    // loss was reported as "the server closed the connection", which sent the operator after the
    // server. The loss now says the client closed it, and why.
    [Fact]
    public async Task A_connection_the_client_closes_after_a_timeout_is_reported_as_closed_by_the_client()
    {
        await using var devices = new RingDevices(2);
        await using var holding = HoldingServer.Start(devices, "held1", "remote1");
        var remote = holding.Remote;
        var errors = new LostConnections();
        remote.Queue.Events = errors;
        _ = remote.ExecuteAsync(ActorBlk.Hardware.Requests.BlockOp.Read, 0, 4096, new byte[4096]).AsTask();
        await Condition.EventuallyAsync(() => holding.Held == 1 && holding.Server.InFlight == 1, "the read reaches the server, which holds it");

        // Its deadline long past: the scan calls the driver's timeout, which closes the connection.
        remote.Queue.HardwareContexts[0].ScanTimeouts(long.MaxValue, remote.Queue.Driver);
        await Condition.EventuallyAsync(() => !errors.Reported.IsEmpty, "the loss is reported");
        var lost = Assert.Single(errors.Reported);
        Assert.Contains("NBD connection lost: the client closed it after a request timed out (io_timeout 1000 ms)", lost.Message, StringComparison.Ordinal);
    }

    // An outside audit stopped nbdkit for longer than io_timeout: the connection was lost, and
    // while the reopen ran the scans kept finding its requests expired (they stay in flight until
    // the reopen takes them back). One scan's handler ran after the reopen had installed the fresh
    // connection and killed it, "after a request timed out", though that connection had never
    // carried the request: one more loss, and a reset of a device that had just recovered.
    [Fact]
    public async Task A_timeout_of_a_request_whose_connection_was_lost_does_not_close_the_fresh_connection()
    {
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new FakeNbdServer(_ => FakeNbdExport.Default, async s =>
        {
            if (s.Index > 0)
            {
                await s.ServeAsync(0x22);
                return;
            }

            // The first connection takes the read and never answers it.
            await s.ReadRequestAsync();
            held.TrySetResult();
            while (await s.ReadRequestAsync() is not null)
            {
            }
        });
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "stale0", Driver = "nbd", Uri = server.Uri(), IoTimeoutMs = 1000 }, CpuTopology.Simulated(2));
        var errors = new LostConnections();
        device.Queue.Events = errors;
        var driver = (NbdClientDriver)device.Queue.Driver;
        var read = device.ExecuteAsync(ActorBlk.Hardware.Requests.BlockOp.Read, 0, 4096, new byte[4096]).AsTask();
        await held.Task.WaitAsync(Condition.Timeout);

        // The connection is lost; this harness has no supervision, so the read stays in flight, as
        // it does while a reopen runs. The reopen connects afresh before the read is taken back.
        driver.Connections.Single().Kill("the spec cuts it");
        await Condition.EventuallyAsync(() => driver.LiveConnections == 0 && errors.Reported.Count == 1, "the loss is reported");
        driver.Reopen();
        var fresh = driver.Connections.Single();

        // A scan finds the read expired. Its connection is gone: the fresh one is not blamed.
        device.Queue.HardwareContexts[0].ScanTimeouts(long.MaxValue, driver);
        Assert.Same(fresh, driver.Connections.Single());

        // It still serves: a read through it is answered (the old code had closed it, and the read
        // went into a dead connection).
        var second = new byte[4096];
        Assert.Equal(ActorBlk.Hardware.Requests.BlockStatus.Ok, await device.ExecuteAsync(ActorBlk.Hardware.Requests.BlockOp.Read, 4096, 4096, second).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(second, b => Assert.Equal(0x22, b));
        Assert.Single(errors.Reported);
        Assert.Equal(1, driver.LiveConnections);

        // The held read ends with the device.
        device.Queue.SetOffline(failInFlight: true);
        Assert.Equal(ActorBlk.Hardware.Requests.BlockStatus.Offline, await read.WaitAsync(Condition.Timeout));
    }

    private sealed class LostConnections : ActorBlk.Hardware.Queues.IQueueEvents
    {
        public System.Collections.Concurrent.ConcurrentQueue<Exception> Reported { get; } = new();

        public void OnDeviceError(ActorBlk.Hardware.Queues.HardwareContext hctx, Exception error) => Reported.Enqueue(error);

        public void OnAbort(ActorBlk.Hardware.Queues.HardwareContext hctx)
        {
        }
    }

    [Fact]
    public async Task A_reconnected_connection_starts_one_receiver_however_often_its_queue_is_initialised()
    {
        // Mailbox dispatch: a reset or reopen reconnects and starts the fresh connection, then the
        // new driver actor's first round calls InitHardwareContext, which started it a second
        // time: two pumps and two receivers on one socket, splitting its replies between them.
        await using var fx = NbdExportFixture.Start();
        await using var devices = new RingDevices(2);
        var remote = devices.Create(new DeviceOptions { Name = "rc0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{fx.Endpoint.Port}/mem0" }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)remote.Queue.Driver;
        driver.Reset();
        driver.InitHardwareContext(remote.Queue.HardwareContexts[0]);
        Assert.All(driver.Connections, c => Assert.Equal(1, c.Started));

        // And the connection works: data written reads back, many times over.
        for (var i = 0; i < 64; i++)
        {
            var data = Enumerable.Range(0, 4096).Select(b => (byte)(b + i)).ToArray();
            await remote.WriteAsync(i * 4096L, data).AsTask().WaitAsync(Condition.Timeout);
            var back = new byte[4096];
            await remote.ReadAsync(i * 4096L, back).AsTask().WaitAsync(Condition.Timeout);
            Assert.Equal(data, back);
        }
    }

    [SkippableFact]
    public async Task Against_nbdkit_memory_reads_and_writes()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit"), "nbdkit is not installed");
        await WithNbdkitAsync(["memory", "64M"], async port =>
        {
            await using var devices = new RingDevices(2);
            var device = devices.Create(new DeviceOptions { Name = "kit0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{port}", Connections = 2 }, CpuTopology.Simulated(2));
            await ExerciseAsync(device, 64 << 20);
        });
    }

    // nbdkit -r: NBD_FLAG_READ_ONLY, and no trim or zeroes. The device is read-only and refuses
    // writes itself, with a typed reason, instead of sending them for the server to refuse.
    [SkippableFact]
    public async Task Against_nbdkit_read_only_the_device_is_read_only()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit"), "nbdkit is not installed");
        await WithNbdkitAsync(["-r", "memory", "16M"], async port =>
        {
            await using var devices = new RingDevices(2);
            var device = devices.Create(new DeviceOptions { Name = "kitro0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{port}" }, CpuTopology.Simulated(2));
            Assert.True(device.IsReadOnly);
            Assert.True(device.Queue.Driver.ReadOnly);
            var error = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.WriteAsync(0, new byte[4096]));
            Assert.Equal(InvalidRequestReason.ReadOnly, error.Reason);

            // The server offers neither zeroes nor trim on a read-only export: refused here too
            // (support is checked before read-only, see BlockDevice's validation).
            foreach (var write in new Func<Task>[] { async () => await device.WriteZeroesAsync(0, 4096), async () => await device.DiscardAsync(0, 4096) })
            {
                Assert.Contains((await Assert.ThrowsAsync<InvalidBlockRequestException>(write)).Reason, new[] { InvalidRequestReason.NotSupported, InvalidRequestReason.ReadOnly });
            }

            Assert.Throws<InvalidOperationException>(() => device.Queue.ReadOnly = false);
            Assert.True(device.IsReadOnly);
            var back = new byte[4096];
            await device.ReadAsync(4096, back);
            Assert.All(back, b => Assert.Equal(0, b));
        });
    }

    // An outside audit: an export whose minimum block size is 64 KiB was opened with 4096-byte
    // blocks (the size was clamped), and every request then failed with EINVAL. The minimum is a
    // MUST for the client: above 4096, the largest logical block size here, the open fails and says why.
    [SkippableFact]
    public async Task An_export_whose_minimum_block_size_is_above_4096_is_refused_at_open_with_the_reason()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit"), "nbdkit is not installed");
        await WithNbdkitAsync(
            ["--filter=blocksize-policy", "memory", "16M", "blocksize-minimum=65536", "blocksize-preferred=65536", "blocksize-maximum=1048576", "blocksize-error-policy=error"],
            port =>
            {
                var ex = Assert.Throws<BlockDeviceOpenException>(() => DeviceBuilder.CreateDriver(new DeviceOptions { Name = "kit64k", Driver = "nbd", Uri = $"nbd://127.0.0.1:{port}" }));
                Assert.Contains("needs requests aligned to 65536 bytes", ex.ToString(), StringComparison.Ordinal);
                return Task.CompletedTask;
            });
    }

    // Starts nbdkit on a free port and runs the body against it. The port is free when chosen but
    // not reserved, so another spec may take it before nbdkit binds it (one CI run waited 60 s for
    // an nbdkit that had exited): nbdkit exiting before it listens is retried on another port.
    // With a socket path, nbdkit listens there (-U) instead, and the body is given port 0.
    private static async Task WithNbdkitAsync(string[] args, Func<int, Task> body, string? socket = null)
    {
        for (var attempt = 1; ; attempt++)
        {
            var port = socket is null ? FreePort() : 0;
            var psi = new ProcessStartInfo("nbdkit") { RedirectStandardError = true, RedirectStandardOutput = true };
            string[] listen = socket is null ? ["-i", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture)] : ["-U", socket];
            foreach (var a in new[] { "-f", "--exit-with-parent" }.Concat(listen).Concat(args))
            {
                psi.ArgumentList.Add(a);
            }

            using var nbdkit = await ProcessLauncher.StartAsync(psi); // nbdkit dies with the thread that forked it (ProcessLauncher)
            var errors = new System.Text.StringBuilder();
            nbdkit.ErrorDataReceived += (_, e) =>
            {
                lock (errors)
                {
                    errors.AppendLine(e.Data);
                }
            };
            nbdkit.OutputDataReceived += (_, _) => { };
            nbdkit.BeginErrorReadLine();
            nbdkit.BeginOutputReadLine();
            try
            {
                await Condition.EventuallyAsync(() => nbdkit.HasExited || (socket is null ? CanConnect(port) : UnixSockets.Listens(socket)), "nbdkit listens or exits");
                if (nbdkit.HasExited)
                {
                    Assert.True(attempt < 5, $"nbdkit exited before listening, five times; last: {errors}");
                    continue;
                }

                await body(port);
                return;
            }
            finally
            {
                if (!nbdkit.HasExited)
                {
                    nbdkit.Kill();
                }

                await nbdkit.WaitForExitAsync();
            }
        }
    }

    [Fact]
    public void An_unreachable_server_fails_device_creation_with_the_uri_named()
    {
        // A port bound and never listening refuses every connection, and no other program can
        // be given it while the spec runs (a port probed free and released could be).
        using var reserved = ReservedPort.Any();
        var port = reserved.Port;
        var ex = Assert.Throws<BlockDeviceOpenException>(() => DeviceBuilder.CreateDriver(new DeviceOptions { Name = "gone0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{port}/x" }));
        Assert.Contains($"nbd://127.0.0.1:{port}/x", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("nbd://h/e", "h", 10809, "e", false)]
    [InlineData("nbds://10.0.0.1:10900/disk%200", "10.0.0.1", 10900, "disk 0", true)]
    [InlineData("nbd://[::1]:99/", "::1", 99, "", false)]
    [InlineData("nbd://h", "h", 10809, "", false)]
    [InlineData("nbd://h//disk", "h", 10809, "/disk", false)]
    [InlineData("nbd://h/a/../b", "h", 10809, "a/../b", false)]
    [InlineData("nbd://h:1/v%3Fx%23y?", "h", 1, "v?x#y", false)]
    [InlineData("NBDS://h/e?tls-type=x509", "h", 10809, "e", true)]
    [InlineData("nbd+unix:///e?socket=/s", "", 0, "e", false)]
    [InlineData("nbds+unix:///?socket=/s", "", 0, "", true)]
    public void Uris_parse(string text, string host, int port, string export, bool tls)
    {
        var uri = NbdUri.Parse(text);
        Assert.Equal(new NbdUri(host, port, export, tls) { Socket = uri.Socket }, uri);
        Assert.Equal(text.Contains("+unix", StringComparison.Ordinal) ? "/s" : null, uri.Socket);
    }

    // The NBD URI specification's query parameters (doc/uri.md): socket for nbd+unix, tls-type,
    // tls-hostname and tls-verify-peer, and libnbd's tls-certificates; and the URI's text again.
    [Fact]
    public void Query_parameters_parse_and_the_text_parses_back_to_the_same_uri()
    {
        var uri = NbdUri.Parse("nbds://h:99/disk?tls-hostname=server.example&tls-verify-peer=0&tls-certificates=/etc/pki/a%20b&tls-type=x509");
        Assert.Equal(("h", 99, "disk", true), (uri.Host, uri.Port, uri.Export, uri.Tls));
        Assert.Equal(("server.example", false, "/etc/pki/a b"), (uri.TlsHostname, uri.TlsVerifyPeer, uri.TlsCertificates));
        Assert.Equal("server.example", uri.TlsTargetHost);
        Assert.Equal("h", NbdUri.Parse("nbds://h/").TlsTargetHost);
        Assert.Equal("localhost", NbdUri.Parse("nbds+unix:///?socket=/run/s").TlsTargetHost);
        Assert.True(NbdUri.Parse("nbds://h/?tls-verify-peer=yes").TlsVerifyPeer);
        Assert.Equal('\0', NbdUri.Parse("nbd+unix:///?socket=%00abstract").Socket![0]);
        foreach (var text in new[]
        {
            "nbds://h:99/disk?tls-hostname=server.example&tls-verify-peer=0&tls-certificates=/etc/pki/a%20b",
            "nbd+unix:///e%3Fx?socket=/tmp/a%26b%23c",
            "nbds+unix:///?socket=%00abstract&tls-verify-peer=1",
            "nbd://[::1]:7/%25d%0A",
        })
        {
            var parsed = NbdUri.Parse(text);
            Assert.Equal(parsed, NbdUri.Parse(parsed.ToString()));
            Assert.Equal(-1, ControlCharacters.IndexIn(parsed.ToString()));
        }
    }

    // "Any other query parameters which the client does not understand SHOULD be diagnosed by the
    // parser" (doc/uri.md): they were all ignored, so `?tls-certificates=DIR` on an nbds:// URI,
    // as libnbd's tools take it, verified against the system trust store instead.
    [Theory]
    [InlineData("nbd://h/e?tls=1", "'tls' is not one this client understands")]
    [InlineData("nbd://h/e?x-experimental=1", "'x-experimental' is not one this client understands")]
    [InlineData("nbd://h/e?tls-certificates=/d", "only an nbds:// or nbds+unix:// URI uses TLS")]
    [InlineData("nbd://h/e?tls-verify-peer=0", "only an nbds:// or nbds+unix:// URI uses TLS")]
    [InlineData("nbds://h/e?tls-type=psk", "X.509 TLS only")]
    [InlineData("nbds://h/e?tls-type=anon", "X.509 TLS only")]
    [InlineData("nbds://h/e?tls-type=kerberos", "is not x509, anon or psk")]
    [InlineData("nbds://h/e?tls-psk-file=/k", "pre-shared key")]
    [InlineData("nbds://h/e?tls-verify-peer=maybe", "tls-verify-peer is 0 or 1")]
    [InlineData("nbds://h/e?tls-hostname=", "tls-hostname needs a value")]
    [InlineData("nbds://h/e?tls-hostname=a&tls-hostname=b", "'tls-hostname' is given twice")]
    [InlineData("nbd://h/e?socket=/s", "an nbd:// URI connects over TCP")]
    [InlineData("nbd+unix:///e", "MUST name its socket")]
    [InlineData("nbd+unix://host/e?socket=/s", "names no host")]
    [InlineData("nbd+tcp://h/e", "is not an NBD URI")]
    public void Uris_the_client_cannot_use_are_refused_saying_why(string text, string why)
    {
        Assert.Contains(why, Assert.Throws<FormatException>(() => NbdUri.Parse(text)).Message, StringComparison.Ordinal);
        var refused = Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Name = "u0", Driver = "nbd", Uri = text }.Validate());
        Assert.Equal("uri", refused.Option);
    }

    // RFC 3986: the query ends at the fragment, and a '?' in the fragment starts none. The parser
    // took the first '?' anywhere: "nbd+unix:///#?socket=PATH" connected to PATH (libnbd refuses
    // it), and "nbds://h/#?tls-verify-peer=0" turned verification off (a review).
    [Fact]
    public void A_question_mark_in_the_fragment_starts_no_query()
    {
        Assert.Contains("MUST name its socket", Assert.Throws<FormatException>(() => NbdUri.Parse("nbd+unix:///#?socket=/s")).Message, StringComparison.Ordinal);
        Assert.Null(NbdUri.Parse("nbds://h/e#?tls-verify-peer=0").TlsVerifyPeer);
        Assert.Equal("/s", NbdUri.Parse("nbd+unix:///e?socket=/s#?socket=/t").Socket);
    }

    // sun_path holds 108 bytes: a socket path of 107 and its NUL, an abstract name of 108. A
    // longer one escaped the connect as .NET's ArgumentOutOfRangeException, a stack trace in
    // bench and serve (a review; libnbd: "socket name too long"); a NUL inside a path would have
    // ended it there.
    [Fact]
    public void A_socket_name_longer_than_a_unix_socket_holds_or_with_a_nul_in_its_path_is_refused()
    {
        var path = "/" + new string('s', 106);
        Assert.Equal(path, NbdUri.Parse($"nbd+unix:///?socket={path}").Socket);
        Assert.Contains("is 108 bytes long, and a Unix domain socket's name holds at most 107", Assert.Throws<FormatException>(() => NbdUri.Parse($"nbd+unix:///?socket={path}s")).Message, StringComparison.Ordinal);
        Assert.Equal(108, NbdUri.Parse($"nbd+unix:///?socket=%00{new string('a', 107)}").Socket!.Length);
        Assert.Contains("at most 108", Assert.Throws<FormatException>(() => NbdUri.Parse($"nbd+unix:///?socket=%00{new string('a', 108)}")).Message, StringComparison.Ordinal);
        Assert.Contains("holds a NUL", Assert.Throws<FormatException>(() => NbdUri.Parse("nbd+unix:///?socket=/tmp/a%00b")).Message, StringComparison.Ordinal);
        Assert.Equal("uri", Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Name = "u0", Driver = "nbd", Uri = $"nbd+unix:///?socket={path}s" }.Validate()).Option);
    }

    // connect(2)'s ENOENT on a Unix domain socket came out as .NET's "Cannot assign requested
    // address" (a review): the missing socket is named.
    [Fact]
    public void A_unix_socket_that_does_not_exist_is_named()
    {
        using var dir = new TempDirectory("nbd-unix-missing");
        var socket = dir.File("none.sock");
        var refused = Assert.Throws<IOException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse($"nbd+unix:///?socket={socket}") }, "missing0"));
        Assert.Equal($"cannot connect to nbd+unix:///?socket={socket}: no socket at '{socket}' (No such file or directory)", refused.Message);
    }

    // The URI and the device's own TLS settings must not say two things.
    [Fact]
    public void Tls_settings_given_both_in_the_uri_and_in_the_options_are_refused()
    {
        Assert.Equal("tls_ca", Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Name = "u0", Driver = "nbd", Uri = "nbds://h/?tls-certificates=/d", TlsCa = "/ca.pem" }.Validate()).Option);
        Assert.Equal("tls_verify", Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Name = "u0", Driver = "nbd", Uri = "nbds://h/?tls-verify-peer=1", TlsVerify = false }.Validate()).Option);
        new DeviceOptions { Name = "u0", Driver = "nbd", Uri = "nbds://h/?tls-verify-peer=0" }.Validate();
        var options = new NbdClientOptions { Uri = NbdUri.Parse("nbds://h/?tls-verify-peer=0&tls-certificates=/d") };
        Assert.False(options.VerifiesPeer);
        Assert.Equal("/d/ca-cert.pem", options.TrustAnchors);
        Assert.True(new NbdClientOptions { Uri = NbdUri.Parse("nbds://h/") }.VerifiesPeer);
        Assert.Null(new NbdClientOptions { Uri = NbdUri.Parse("nbds://h/") }.TrustAnchors);
    }

    // nbdkit -U: an nbd+unix:// URI connects over the Unix domain socket.
    [SkippableFact]
    public async Task Against_nbdkit_on_a_unix_socket_reads_and_writes()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit"), "nbdkit is not installed");
        using var dir = new TempDirectory("nbd-unix");
        var socket = dir.File("kit.sock");
        await WithNbdkitAsync(["memory", "16M"], async _ =>
        {
            await using var devices = new RingDevices(2);
            var device = devices.Create(new DeviceOptions { Name = "kitunix0", Driver = "nbd", Uri = $"nbd+unix:///?socket={socket}" }, CpuTopology.Simulated(2));
            await ExerciseAsync(device, 16 << 20);
            Assert.Contains($"nbd+unix:///?socket={socket}", device.Queue.Driver.Description, StringComparison.Ordinal);
        }, socket);
    }

    // nbdkit --tls=require --tls-certificates=DIR --tls-verify-peer: the URI's tls-certificates
    // is libnbd's directory (ca-cert.pem, client-cert.pem, client-key.pem); the client presents
    // its certificate, which nbdkit verifies, and checks the server's name against tls-hostname.
    [SkippableFact]
    public async Task Against_nbdkit_with_tls_certificates_the_client_presents_its_certificate()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit"), "nbdkit is not installed");
        using var certs = new TestCertificates();
        using var server = new TempDirectory("nbd-kit-tls");
        certs.WriteAuthorityPem(server.File("ca-cert.pem"));
        certs.WriteServerPem(server.File("server-cert.pem"), server.File("server-key.pem"));
        using var client = new TempDirectory("nbd-client-tls");
        certs.WriteAuthorityPem(client.File("ca-cert.pem"));
        certs.WriteClientPem(client.File("client-cert.pem"), client.File("client-key.pem"));
        using var anonymous = new TempDirectory("nbd-client-anon");
        certs.WriteAuthorityPem(anonymous.File("ca-cert.pem"));
        using var halfway = new TempDirectory("nbd-client-half");
        certs.WriteAuthorityPem(halfway.File("ca-cert.pem"));
        certs.WriteClientPem(halfway.File("client-cert.pem"), client.File("unused-key.pem"));

        await WithNbdkitAsync(["--tls=require", $"--tls-certificates={server.Path}", "--tls-verify-peer", "memory", "16M"], async port =>
        {
            var uri = $"nbds://127.0.0.1:{port}/?tls-certificates={client.Path}";
            await using (var devices = new RingDevices(2))
            {
                var device = devices.Create(new DeviceOptions { Name = "kittls0", Driver = "nbd", Uri = uri }, CpuTopology.Simulated(2));
                await ExerciseAsync(device, 16 << 20);
            }

            // The certificate names localhost and 127.0.0.1: tls-hostname replaces the host in the check.
            new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse(uri + "&tls-hostname=localhost") }, "kittls1").Dispose();
            var mismatch = Assert.Throws<NbdTlsException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse(uri + "&tls-hostname=other.example") }, "kittls2"));
            Assert.Contains("for the name 'other.example'", mismatch.Message, StringComparison.Ordinal);
            Assert.Contains("ca-cert.pem' (tls-certificates)", mismatch.Message, StringComparison.Ordinal);

            // No client certificate: nbdkit refuses it (under TLS 1.3 after the client's handshake has
            // completed, which said only "Broken pipe" before: a review).
            var refused = Assert.Throws<NbdTlsException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse($"nbds://127.0.0.1:{port}/?tls-certificates={anonymous.Path}") }, "kittls3"));
            // (TLS 1.2, where a server refuses within the handshake, would say "TLS handshake failed".)
            Assert.True(refused.Message.Contains("presenting no certificate", StringComparison.Ordinal) || refused.Message.Contains("TLS handshake failed", StringComparison.Ordinal), refused.Message);

            // A certificate without its key is named, before any connection.
            var half = Assert.Throws<NbdTlsException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse($"nbds://127.0.0.1:{port}/?tls-certificates={halfway.Path}") }, "kittls4"));
            Assert.Contains("client-cert.pem without client-key.pem", half.Message, StringComparison.Ordinal);
        });

        // nbds+unix://: TLS over the Unix socket. It has no host, so without tls-hostname only the
        // chain is checked, as libnbd does (a certificate for srv.example, not localhost, is taken);
        // with it, the name too.
        using var named = new TestCertificates("ActorBlk test CA 2", serverName: "srv.example");
        using var unixServer = new TempDirectory("nbd-kit-tls-unix");
        named.WriteAuthorityPem(unixServer.File("ca-cert.pem"));
        named.WriteServerPem(unixServer.File("server-cert.pem"), unixServer.File("server-key.pem"));
        using var unixClient = new TempDirectory("nbd-client-tls-unix");
        named.WriteAuthorityPem(unixClient.File("ca-cert.pem"));
        named.WriteClientPem(unixClient.File("client-cert.pem"), unixClient.File("client-key.pem"));
        var socket = unixServer.File("kit.sock");
        await WithNbdkitAsync(["--tls=require", $"--tls-certificates={unixServer.Path}", "--tls-verify-peer", "memory", "16M"], async _ =>
        {
            var unixUri = $"nbds+unix:///?socket={socket}&tls-certificates={unixClient.Path}";
            await using (var devices = new RingDevices(2))
            {
                var device = devices.Create(new DeviceOptions { Name = "kittls5", Driver = "nbd", Uri = unixUri }, CpuTopology.Simulated(2));
                await ExerciseAsync(device, 16 << 20);
            }

            new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse(unixUri + ";tls-hostname=srv.example") }, "kittls6").Dispose(); // ';' separates too, as in libnbd
            var wrongName = Assert.Throws<NbdTlsException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse(unixUri + "&tls-hostname=localhost") }, "kittls7"));
            Assert.Contains("RemoteCertificateNameMismatch", wrongName.Message, StringComparison.Ordinal);

            // Another CA's chain is refused without a name to check, too.
            Assert.Throws<NbdTlsException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse($"nbds+unix:///?socket={socket}&tls-certificates={client.Path}") }, "kittls8"));
        }, socket);
    }

    [Fact]
    public void Bad_options_are_refused_with_the_key_named()
    {
        Assert.Equal("uri", Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Driver = "nbd" }.Validate()).Option);
        Assert.Equal("uri", Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Driver = "nbd", Uri = "http://x/" }.Validate()).Option);
        Assert.Equal("connections", Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Driver = "nbd", Uri = "nbd://x/", Connections = 0 }.Validate()).Option);
        Assert.Equal("uri", Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Uri = "nbd://x/" }.Validate()).Option);
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    private static bool CanConnect(int port)
    {
        try
        {
            using var c = new TcpClient();
            c.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
