using System.Net;
using System.Net.Sockets;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The NBD server on a Unix domain socket (<see cref="NbdServerOptions.UnixSocket"/>, as
/// <c>qemu-nbd -k</c> and <c>nbdkit -U</c>): real clients over <c>nbd+unix://</c> and
/// <c>nbds+unix://</c>, ActorBlk's own client driver, the socket file's lifecycle (a stale socket
/// bound again, a live one and anything that is not a socket refused and left alone, the file
/// removed at the stop only while it is still this server's), and what the TCP path has: the
/// connection cap and its log line (a Unix peer named by its process), the buffer budget's
/// hang-up check, the graceful stop.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class NbdServerUnixSocketSpec : IDisposable
{
    private const long MiB = 1 << 20;

    // Short: a socket path holds at most 107 bytes (/tmp/nbdu-<32 hex digits>/nbd.sock is 51).
    private readonly TempDirectory _dir = new("nbdu");

    public void Dispose() => _dir.Dispose();

    private string SocketPath => _dir.File("nbd.sock");

    private NbdExportFixture Start(NbdServerOptions? options = null) =>
        NbdExportFixture.Start((options ?? new NbdServerOptions()) with { UnixSocket = SocketPath });

    // A server that must not start: why (it has no export; it never serves).
    private static string Refusal(string socket) =>
        Assert.Throws<IOException>(() => NbdServer.Start(new NbdDeviceList([]), new NbdServerOptions { UnixSocket = socket })).Message;

    // The process's umask and effective uid, as the kernel reports them (/proc/self/status).
    private static int Status(string field, int index, int radix)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(field + ":", StringComparison.Ordinal));
        var value = line[(field.Length + 1)..].Split('\t', StringSplitOptions.RemoveEmptyEntries)[index];
        return Convert.ToInt32(value, radix);
    }

    private static string[] Lines(NbdExportFixture fx)
    {
        lock (fx.Log)
        {
            return [.. fx.Log];
        }
    }

    [SkippableFact]
    public async Task Nbdinfo_lists_and_opens_the_exports_over_the_socket_whose_file_follows_the_umask()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");
        await using var fx = Start();
        Assert.Equal($"unix:{SocketPath}", fx.Server.Address);
        Assert.Equal($"nbd+unix:///mem0?socket={SocketPath}", fx.Server.ExportUri("mem0"));
        Assert.Throws<InvalidOperationException>(() => fx.Server.LocalEndPoint);

        var info = await ExternalTool.RunAsync("nbdinfo", fx.Server.ExportUri("mem0"));
        Assert.Matches(@"export-size:\s+67108864", info);
        Assert.Matches(@"description:\s+ActorBlk null device mem0, 512-byte blocks, diskseq \d+@[0-9a-f]{32}", info);
        var list = await ExternalTool.RunAsync("nbdinfo", "--list", $"nbd+unix:///?socket={SocketPath}");
        Assert.Contains("mem0", list, StringComparison.Ordinal);
        Assert.Contains("ro0", list, StringComparison.Ordinal);

        // As bind(2) makes it, as qemu-nbd's: 0777 less the umask (connecting needs write permission).
        var umask = Status("Umask", 0, 8);
        Assert.Equal((UnixFileMode)(0x1FF & ~umask), File.GetUnixFileMode(SocketPath));
    }

    [SkippableFact]
    public async Task Qemu_img_reads_info_and_copies_an_image_in_and_out_over_the_socket()
    {
        Skip.IfNot(ExternalTool.Exists("qemu-img"), "qemu-img (qemu-utils) is not installed");
        await using var fx = Start();
        var source = _dir.File("source.raw");
        var back = _dir.File("back.raw");
        var bytes = new byte[NbdExportFixture.MemSize];
        new Random(17).NextBytes(bytes.AsSpan(0, 8 << 20));
        await File.WriteAllBytesAsync(source, bytes);

        Assert.Contains("64 MiB", await ExternalTool.RunAsync("qemu-img", "info", fx.Uri("mem0")), StringComparison.Ordinal);
        await ExternalTool.RunAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, fx.Uri("mem0"));
        await ExternalTool.RunAsync("qemu-img", "convert", "-f", "raw", "-O", "raw", fx.Uri("mem0"), back);
        Assert.Equal(bytes, await File.ReadAllBytesAsync(back));
    }

    [SkippableFact]
    public async Task Nbdcopy_with_several_connections_copies_exactly_over_the_socket()
    {
        Skip.IfNot(ExternalTool.Exists("nbdcopy"), "nbdcopy (libnbd-bin) is not installed");
        await using var fx = Start();
        var source = _dir.File("source.raw");
        var back = _dir.File("back.raw");
        var bytes = new byte[NbdExportFixture.MemSize];
        new Random(23).NextBytes(bytes);
        await File.WriteAllBytesAsync(source, bytes);

        await ExternalTool.RunAsync("nbdcopy", "--connections=4", "--requests=16", "--flush", source, fx.Uri("mem0"));
        await ExternalTool.RunAsync("nbdcopy", "--connections=4", fx.Uri("mem0"), back);
        Assert.Equal(bytes, await File.ReadAllBytesAsync(back));
        var check = new byte[4096];
        await fx.Mem.ReadAsync(32 << 20, check);
        Assert.Equal(bytes.AsSpan(32 << 20, 4096).ToArray(), check);
    }

    [SkippableFact]
    public async Task Nbdinfo_and_the_client_driver_connect_over_tls_on_the_socket()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");
        using var certs = new TestCertificates();
        var ca = certs.WriteAuthorityPem(_dir.File("ca-cert.pem"));
        await using var fx = Start(new NbdServerOptions { Tls = NbdTlsMode.Require, Certificate = certs.Server });
        Assert.Equal($"nbds+unix:///mem0?socket={SocketPath}", fx.Server.ExportUri("mem0"));

        // Plain text is refused before STARTTLS, as over TCP.
        await using (var plain = await RawNbdClient.NegotiateAsync(fx.Target))
        {
            await plain.SendOptionAsync(NbdOption.Go, RawNbdClient.InfoRequest("mem0"));
            Assert.Equal(NbdReply.ErrTlsRequired, (await plain.ReadOptionReplyAsync()).Type);
        }

        // libnbd (gnutls) checks the chain against ca-cert.pem; a Unix socket has no host name to check.
        var info = await ExternalTool.RunAsync("nbdinfo", $"nbds+unix:///mem0?socket={SocketPath}&tls-certificates={_dir.Path}");
        Assert.Matches(@"export-size:\s+67108864", info);

        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "utls0", Driver = "nbd", Uri = fx.Server.ExportUri("mem0"), TlsCa = ca, Connections = 2 }, CpuTopology.Simulated(2));
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i * 5)).ToArray();
        await device.WriteAsync(1 << 20, data);
        var back = new byte[data.Length];
        await fx.Mem.ReadAsync(1 << 20, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task The_client_driver_reads_and_writes_through_the_socket()
    {
        await using var fx = Start();
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "unix0", Driver = "nbd", Uri = fx.Uri("mem0"), Connections = 2 }, CpuTopology.Simulated(2));
        Assert.Equal(NbdExportFixture.MemSize, device.Capacity);
        var data = Enumerable.Range(0, 64 << 10).Select(i => (byte)(i * 31)).ToArray();
        await device.WriteAsync(4 << 20, data);
        var back = new byte[data.Length];
        await device.ReadAsync(4 << 20, back);
        Assert.Equal(data, back);
        await fx.Mem.ReadAsync(4 << 20, back);
        Assert.Equal(data, back);
        Assert.Equal(2, fx.Server.ConnectionCount);
    }

    [Fact]
    public async Task An_abstract_socket_serves_the_client_driver_and_a_second_server_on_its_name_is_refused()
    {
        var name = $"actorblk-{Guid.NewGuid():N}";
        await using var fx = NbdExportFixture.Start(new NbdServerOptions { UnixSocket = "@" + name });
        Assert.Equal($"nbd+unix:///mem0?socket=%00{name}", fx.Server.ExportUri("mem0"));
        await using (var devices = new RingDevices(2))
        {
            var device = devices.Create(new DeviceOptions { Name = "abs0", Driver = "nbd", Uri = fx.Server.ExportUri("mem0") }, CpuTopology.Simulated(2));
            var data = Enumerable.Range(0, 4096).Select(i => (byte)(i ^ 0x3c)).ToArray();
            await device.WriteAsync(8192, data);
            var back = new byte[data.Length];
            await fx.Mem.ReadAsync(8192, back);
            Assert.Equal(data, back);
        }

        Assert.Equal($"cannot listen on unix:@{name}: another server listens on the abstract socket (the name is taken); stop it, or choose another name", Refusal("@" + name));

        // qemu names an abstract socket in its options, not in an nbd+unix URI.
        if (ExternalTool.Exists("qemu-img"))
        {
            var info = await ExternalTool.RunAsync("qemu-img", "info", "--image-opts", $"driver=nbd,server.type=unix,server.path={name},server.abstract=on,export=mem0");
            Assert.Contains("64 MiB", info, StringComparison.Ordinal);
        }
    }

    // A server killed with SIGKILL leaves its socket file behind, and nbdkit 1.32 will not bind
    // over it (README); this server removes it, says so, and listens there again.
    [Fact]
    public async Task A_stale_socket_nothing_listens_on_is_removed_and_bound_again()
    {
        // Bound, moved away and closed: the socket file stays, and nothing listens on it.
        using (var killed = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            var bound = _dir.File("bound.sock");
            killed.Bind(new UnixDomainSocketEndPoint(bound));
            killed.Listen();
            File.Move(bound, SocketPath);
        }

        Assert.True(File.Exists(SocketPath));
        Assert.False(UnixSockets.Listens(SocketPath));

        await using var fx = Start();
        Assert.Contains($"NBD server: removed the stale socket '{SocketPath}' (nothing listened on it: a server that did not stop cleanly left it) to listen there", Lines(fx));
        var (client, size, _) = await RawNbdClient.OpenAsync(fx.Target, "mem0");
        await using var _ = client;
        Assert.Equal((ulong)NbdExportFixture.MemSize, size);
    }

    [Fact]
    public async Task A_socket_a_server_listens_on_is_refused_and_left_alone()
    {
        var expected = $"cannot listen on unix:{SocketPath}: another server listens on the socket (it accepted a connection: another ActorBlk node, qemu-nbd or nbdkit?); stop it, or choose another path";

        // Another program's listener.
        using (var other = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            other.Bind(new UnixDomainSocketEndPoint(SocketPath));
            other.Listen();
            Assert.Equal(expected, Refusal(SocketPath));
            Assert.True(UnixSockets.Listens(SocketPath));
        }

        // A running server: the second is refused, the first goes on serving on the same file.
        await using var fx = Start();
        Assert.Equal(expected, Refusal(SocketPath));
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Target, "mem0");
        await using var _ = client;
        await client.SendRequestAsync(NbdCommand.Read, 7, 0, 4096);
        var (error, cookie, _) = await client.ReadSimpleReplyAsync(_ => 4096);
        Assert.Equal((NbdError.None, 7UL), (error, cookie));
    }

    [Fact]
    public void A_path_that_is_not_a_socket_is_refused_and_never_deleted()
    {
        File.WriteAllText(SocketPath, "an image someone cares about");
        Assert.Equal(
            $"cannot listen on unix:{SocketPath}: '{SocketPath}' is a regular file, not a socket, and is left alone: remove it, or choose another path",
            Refusal(SocketPath));
        Assert.Equal("an image someone cares about", File.ReadAllText(SocketPath));
        File.Delete(SocketPath);

        Directory.CreateDirectory(SocketPath);
        Assert.Contains("is a directory, not a socket, and is left alone", Refusal(SocketPath), StringComparison.Ordinal);
        Assert.True(Directory.Exists(SocketPath));
        Directory.Delete(SocketPath);

        // A symbolic link, even one to nothing, is not followed: bind would fail on it anyway, and
        // a link to a stale socket elsewhere must not have that socket removed.
        File.CreateSymbolicLink(SocketPath, _dir.File("nowhere.sock"));
        Assert.Contains("is a symbolic link, not a socket, and is left alone", Refusal(SocketPath), StringComparison.Ordinal);
        Assert.NotNull(new FileInfo(SocketPath).LinkTarget);
    }

    [Fact]
    public async Task The_socket_file_is_removed_at_the_stop_but_a_file_put_in_its_place_is_not()
    {
        await using (var fx = Start())
        {
            Assert.True(UnixSockets.Listens(SocketPath));
        }

        Assert.False(File.Exists(SocketPath));

        // The socket moved away by hand and a regular file put at the path: .NET's own disposal of
        // a socket bound to a UnixDomainSocketEndPoint deleted whatever was at the path.
        var fx2 = Start();
        File.Move(SocketPath, _dir.File("moved.sock"));
        File.WriteAllText(SocketPath, "not the server's");
        await fx2.DisposeAsync();
        Assert.Equal("not the server's", File.ReadAllText(SocketPath));
    }

    [Theory]
    [InlineData("", "the Unix socket '' names no path (e.g. unix:/run/actorblk/nbd.sock).")]
    [InlineData("nbd.sock", "the Unix socket 'nbd.sock' is a relative path; a Unix socket's path must be absolute (e.g. unix:/run/actorblk/nbd.sock): a relative one would depend on the directory the node starts in.")]
    [InlineData("/run/actorblk/", "the Unix socket '/run/actorblk/' ends with '/', which names a directory, not a socket.")]
    [InlineData("/run/a\nb.sock", "the Unix socket '/run/a\\x0ab.sock' holds a control character (U+000A), which a socket name here never takes.")]
    [InlineData("@", "the Unix socket '@' names no socket after the @ (unix:@NAME names one in the abstract namespace).")]
    public void A_socket_name_that_cannot_be_one_is_refused_saying_why(string socket, string message)
    {
        var refused = Assert.Throws<ArgumentException>(() => new NbdServerOptions { UnixSocket = socket }.Validate());
        Assert.Equal(message, refused.Message.Replace(" (Parameter 'UnixSocket')", string.Empty, StringComparison.Ordinal));
    }

    [Fact]
    public void A_path_over_107_bytes_is_refused_and_107_is_taken()
    {
        var longest = "/" + new string('s', 106);
        new NbdServerOptions { UnixSocket = longest }.Validate();
        new NbdServerOptions { UnixSocket = "@" + new string('s', 107) }.Validate();
        var refused = Assert.Throws<ArgumentException>(() => new NbdServerOptions { UnixSocket = longest + "é" }.Validate());
        Assert.StartsWith($"the Unix socket '{longest}é' is 109 bytes long, and a Unix domain socket's path holds at most 107 (sun_path's 108 with its terminating NUL).", refused.Message, StringComparison.Ordinal);
        Assert.Contains("is 108 bytes long after the @", Assert.Throws<ArgumentException>(() => new NbdServerOptions { UnixSocket = "@" + new string('s', 108) }.Validate()).Message, StringComparison.Ordinal);

        // The TCP bind-any refusal does not apply: the socket is the listener, not Listen.
        new NbdServerOptions { UnixSocket = SocketPath, Listen = new IPEndPoint(IPAddress.Any, 10809) }.Validate();
    }

    [Fact]
    public void A_socket_in_a_directory_that_does_not_exist_is_refused_naming_the_directory()
    {
        var missing = _dir.File("missing");
        Assert.Equal($"cannot listen on unix:{missing}/nbd.sock: its directory '{missing}' does not exist", Refusal(Path.Combine(missing, "nbd.sock")));
    }

    // .NET names few of bind(2)'s errors: on a read-only file system the refusal said "Unknown
    // socket error" (a review, `mount -o ro`); the directory's own errno names it now.
    [SkippableFact]
    public void A_socket_on_a_read_only_file_system_is_refused_naming_it()
    {
        Skip.IfNot(Environment.UserName == "root", "mounting a tmpfs needs root");
        var readOnly = _dir.File("ro");
        Directory.CreateDirectory(readOnly);

        // A container that refuses the mount (no CAP_SYS_ADMIN), or has no mount(8), skips.
        var (code, output) = Run("mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", readOnly);
        Skip.If(code != 0, $"mount -t tmpfs -o ro failed ({code}): {output}");
        string refusal;
        try
        {
            refusal = Refusal(Path.Combine(readOnly, "nbd.sock"));
        }
        finally
        {
            // Never left mounted under the temp directory: detached lazily if something holds it.
            if (Run("umount", readOnly).Code != 0)
            {
                (code, output) = Run("umount", "-l", readOnly);
                Assert.True(code == 0, $"umount -l {readOnly} failed ({code}): {output}");
            }
        }

        Assert.Equal($"cannot listen on unix:{readOnly}/nbd.sock: cannot create the socket in '{readOnly}' (Read-only file system)", refusal);
    }

    // ENOENT from a file system that takes no socket file said "Cannot assign requested address"
    // (.NET's word for it). As root, /proc is writable by its mode and still refuses the socket.
    [SkippableFact]
    public void A_socket_in_a_directory_that_takes_no_socket_file_is_refused_saying_so()
    {
        Skip.IfNot(Environment.UserName == "root" && Directory.Exists("/proc/self"), "needs root and /proc");
        Assert.Equal("cannot listen on unix:/proc/actorblk.sock: cannot create the socket in '/proc' (No such file or directory)", Refusal("/proc/actorblk.sock"));
    }

    private static (int Code, string Output) Run(string file, params string[] arguments)
    {
        var start = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        try
        {
            using var process = System.Diagnostics.Process.Start(start)!;
            var output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, output.Trim());
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            return (-1, $"{file}: {ex.Message}");
        }
    }

    // Over TCP a refused connection is logged with its address and port; a Unix peer has none, so
    // its process: pid and uid from SO_PEERCRED.
    [Fact]
    public async Task The_connection_cap_refuses_and_logs_a_unix_peer_by_its_process()
    {
        await using var fx = Start(new NbdServerOptions { MaxConnections = 1 });
        var peer = $"pid {Environment.ProcessId} (uid {Status("Uid", 1, 10)})";
        var (held, _, _) = await RawNbdClient.OpenAsync(fx.Target, "mem0");
        await using var _ = held;
        await using (var refused = await RawNbdClient.ConnectAsync(fx.Target))
        {
            Assert.True(await refused.ClosedByServerAsync());
        }

        Assert.Equal((1, 1L, 2L), (fx.Server.ConnectionCount, fx.Server.RefusedConnections, fx.Server.AcceptedConnections));
        Assert.Contains($"NBD connection from {peer} refused: 1 connections are open (max-connections); 1 refused so far", Lines(fx));

        // A close for the client's fault names it the same way.
        await held.SendRequestAsync(NbdCommand.Read, 1, 0, 4096, magic: 0xdeadbeef);
        Assert.True(await held.ClosedByServerAsync());
        await Condition.EventuallyAsync(() => Lines(fx).Any(l => l.StartsWith($"NBD connection 1 from {peer} closed: ", StringComparison.Ordinal)), "the close is logged naming the peer's process", () => string.Join('\n', Lines(fx)));
    }

    // Over a Unix socket a client's close() makes POLLHUP whether or not it left replies unread
    // (TCP sends a FIN unless replies were unread, then a reset): taken for a reset, a write
    // followed by NBD_CMD_DISC and a close() was dropped; it is served, as over TCP. A close
    // without the disconnect still lets the waiting connection go at once.
    [Fact]
    public async Task A_client_that_closes_while_its_request_waits_for_memory_is_served_after_a_disconnect_and_let_go_without_one()
    {
        await using var fx = Start(new NbdServerOptions { MaxPayload = (int)MiB, MaxBufferMemory = MiB, StallTimeout = TimeSpan.FromMinutes(5), MaxInFlight = 64 });

        // The holder: a 1 MiB write with half its payload sent takes the whole budget, and a 1 MiB
        // read on a second connection waits behind it (NbdBufferBudgetSpec's holder).
        var writer = (await RawNbdClient.OpenAsync(fx.Target, "mem0")).Client;
        await writer.SendRequestAsync(NbdCommand.Write, 0, 0, (uint)MiB, payload: new byte[MiB / 2]);
        await Condition.EventuallyAsync(() => fx.Server.BufferBytesInUse == MiB, "the holder's write takes the whole budget");
        var reader = (await RawNbdClient.OpenAsync(fx.Target, "mem0")).Client;
        await reader.SendRequestAsync(NbdCommand.Read, 0, 0, (uint)MiB);
        await Condition.EventuallyAsync(() => fx.Server.Budget.Waiting == 1, "the holder's reader waits for memory");

        var (quitter, _, _) = await RawNbdClient.OpenAsync(fx.Target, "mem0");
        await quitter.SendRequestAsync(NbdCommand.Write, 1, 40 * MiB, 64 << 10, payload: new byte[64 << 10]);
        var (polite, _, _) = await RawNbdClient.OpenAsync(fx.Target, "mem0");
        var data = Enumerable.Range(0, 64 << 10).Select(i => (byte)(i * 13)).ToArray();
        await polite.SendRequestAsync(NbdCommand.Write, 2, 48 * MiB, (uint)data.Length, payload: data);
        await polite.SendRequestAsync(NbdCommand.Disconnect, 3, 0, 0);
        await Condition.EventuallyAsync(() => fx.Server.Budget.Waiting == 3, "both writes wait for memory behind the holder");

        await quitter.DisposeAsync();
        await polite.DisposeAsync();
        await Condition.EventuallyAsync(() => fx.Server.HungUpWhileWaiting == 1 && fx.Server.ConnectionCount == 3, "the client that closed without a disconnect is let go, the polite one waits on");
        var checks = Interlocked.Read(ref fx.Server.HangUpChecks);
        await Condition.EventuallyAsync(() => Interlocked.Read(ref fx.Server.HangUpChecks) >= checks + 6, "the waiting connections were checked for a hang-up again");
        Assert.Equal((3, 1L), (fx.Server.ConnectionCount, fx.Server.HungUpWhileWaiting));

        await writer.DisposeAsync();
        await reader.DisposeAsync();
        await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 0 && fx.Server.InFlight == 0 && fx.Server.BufferBytesInUse == 0, "every connection is gone and its memory given back");
        var back = new byte[data.Length];
        await fx.Mem.ReadAsync(48 * MiB, back);
        Assert.Equal(data, back);
        await fx.Mem.ReadAsync(40 * MiB, back);
        Assert.All(back, b => Assert.Equal(0, b));
        Assert.Equal(1ul, fx.Mem.Queue.Stats.Read().WriteIos);
    }

    [Fact]
    public async Task At_the_stop_an_open_connection_is_closed_gracefully_and_the_file_goes()
    {
        var fx = Start();
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Target, "mem0");
        await using var _ = client;
        await client.SendRequestAsync(NbdCommand.Write, 9, 0, 4096, payload: new byte[4096]);
        var (error, cookie, _) = await client.ReadSimpleReplyAsync();
        Assert.Equal((NbdError.None, 9UL), (error, cookie));
        Assert.Equal(1, fx.Server.ConnectionCount);

        // The connection closes at the stop (the client reads its end, nothing more), and the
        // socket file is gone once the stop has returned.
        var stop = fx.DisposeAsync().AsTask();
        Assert.Empty(await client.ReadUntilClosedAsync());
        await stop;
        Assert.False(File.Exists(SocketPath));
        Assert.Equal($"unix:{SocketPath}", fx.Server.Address);
    }
}
