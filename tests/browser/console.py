#!/usr/bin/env python3
"""The operator console in a real browser: Debian's Chromium driven by selenium.

Run by tests/api/browser.rs against a service started with PAYMENT_MODE=manual,
DEV_ENDPOINTS=true, an ADMIN_TOKEN and FAULT_ACTOR_PANIC=payment_charged:first=6 (a paid
order's actor crashes until it is parked). Each check prints a line when it passes; the
first failure prints what was seen and exits 1.

    python3 tests/browser/console.py --url http://127.0.0.1:8080 --token TOKEN [--screenshots DIR]
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 20


class Api:
    """The service's HTTP API, without the browser (and without its cookie)."""

    def __init__(self, base, token):
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, admin=True, headers=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if admin:
            request.add_header("Authorization", "Bearer " + self.token)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                return response.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, text

    def get(self, path, admin=True):
        status, body = self.call("GET", path, admin=admin)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {body}")
        return body

    def create_order(self, sku="KB-001"):
        status, body = self.call(
            "POST",
            "/api/orders",
            {"customer_id": "c-browser", "currency": "USD", "items": [{"sku": sku, "quantity": 1}]},
            admin=False,
            headers={"Idempotency-Key": "browser-" + str(uuid.uuid4())},
        )
        if status != 201:
            raise AssertionError(f"create: {status} {body}")
        return body["id"]

    def wait_order(self, order_id, check, what):
        deadline = time.time() + WAIT
        while True:
            order = self.get(f"/api/orders/{order_id}", admin=False)
            if check(order):
                return order
            if time.time() > deadline:
                raise AssertionError(f"order {order_id}: {what} never happened: {json.dumps(order)[:800]}")
            time.sleep(0.2)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # Without the background-networking flags Chromium keeps trying to reach Google's hosts,
    # which this machine's closed network refuses.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        "--user-data-dir=" + tempfile.mkdtemp(prefix="console-chromium-"),
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


class Console:
    def __init__(self, driver, base, shots):
        self.driver = driver
        self.base = base.rstrip("/")
        self.shots = shots

    def open(self, path):
        self.driver.get(self.base + path)

    def wait(self, condition, what, timeout=WAIT):
        try:
            # The pages re-render as events arrive: an element found a moment ago may be gone.
            return WebDriverWait(self.driver, timeout, ignored_exceptions=[
                NoSuchElementException, StaleElementReferenceException]).until(condition)
        except Exception as error:
            raise AssertionError(f"{what}: not within {timeout}s; page at {self.driver.current_url}:\n"
                                 f"{self.driver.find_element(By.TAG_NAME, 'body').text[:1500]}") from error

    def click(self, selector, what):
        """Clicks the element, found afresh until the click lands (pages re-render live)."""
        def clicked(driver):
            for element in driver.find_elements(By.CSS_SELECTOR, selector):
                if element.is_displayed() and element.is_enabled():
                    element.click()
                    return True
            return False
        self.wait(clicked, what)

    def css(self, selector):
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text_of(self, selector):
        return self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, selector)), selector).text

    def shot(self, name):
        if self.shots:
            self.driver.save_screenshot(os.path.join(self.shots, name + ".png"))


def check(name):
    def run(fn):
        def wrapped(*args):
            result = fn(*args)
            print(f"ok   {name}", flush=True)
            return result
        return wrapped
    return run


@check("without a session every console page leads to the login and the data is 401")
def locked(console, api):
    for path in ("/console", "/console/#/orders", "/console/#/dead-letters"):
        console.open(path)
        console.wait(EC.presence_of_element_located((By.ID, "token")), f"{path}: login form")
        assert "/console/login" in console.driver.current_url, console.driver.current_url
    for path in ("/api/admin/overview", "/api/admin/orders", "/api/admin/dead-letters", "/api/events"):
        status, _ = api.call("GET", path, admin=False)
        assert status == 401, f"{path} without a token: {status}"


@check("a wrong token is refused; the right one opens the overview")
def login(console, api):
    console.open("/console/login")
    console.driver.find_element(By.ID, "token").send_keys("not-the-token")
    console.driver.find_element(By.ID, "login").click()
    console.wait(EC.visibility_of_element_located((By.ID, "login-error")), "the refusal")
    assert "token" not in console.driver.current_url.split("?", 1)[-1].replace("failed", ""), console.driver.current_url
    field = console.driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(api.token)
    console.driver.find_element(By.ID, "login").click()
    console.wait(EC.presence_of_element_located((By.ID, "overview-cards")), "the overview")
    assert api.token not in console.driver.current_url
    cookie = console.driver.get_cookie("oos_console")
    assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie
    assert console.driver.execute_script("return document.cookie").find("oos_console") < 0, "readable by scripts"


def overview_counts(console):
    counts = {}
    for card in console.css("#overview-cards .card"):
        key = card.get_attribute("data-key")
        value = card.find_element(By.CSS_SELECTOR, ".value").text
        counts[key] = value
    return counts


@check("the overview's counts match the API")
def overview(console, api, order_ids):
    console.open("/console/#/overview")
    deadline = time.time() + WAIT
    while True:
        expected = api.get("/api/admin/overview")
        shown = overview_counts(console)
        want = {f"status-{s}": str(n) for s, n in expected["orders_by_status"].items()}
        want["parked"] = str(expected["parked"])
        want["dead_letters"] = str(expected["dead_letters"])
        if all(shown.get(k) == v for k, v in want.items()):
            break
        if time.time() > deadline:
            raise AssertionError(f"overview shows {shown}, the API says {want}")
        time.sleep(0.5)
    total = sum(int(shown[f"status-{s}"]) for s in expected["orders_by_status"])
    assert total >= len(order_ids), (total, order_ids)
    assert console.css("svg.chart"), "no chart"
    console.shot("overview")


@check("an order's timeline shows its transitions in order")
def timeline(console, api, order_id):
    console.open(f"/console/#/orders/{order_id}")
    console.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#timeline li")), "the timeline")
    history = api.get(f"/api/orders/{order_id}", admin=False)["history"]
    entries = console.css("#timeline li")
    assert len(entries) == len(history), (len(entries), history)
    for entry, step in zip(entries, history):
        assert entry.get_attribute("data-status") == step["status"], (entry.text, step)
        assert entry.get_attribute("data-event") == step["event"], (entry.text, step)
    first = entries[0].text
    assert "stock.reserve" in first and "order.created" in first, first
    console.shot("order")


@check("cancelling from the order's page compensates it")
def cancel(console, api, order_id):
    console.open(f"/console/#/orders/{order_id}")
    console.click("#action-cancel", "the cancel button")
    console.wait(EC.visibility_of_element_located((By.ID, "cancel-reason")), "the reason field").send_keys("customer called")
    console.click("#cancel-confirm", "the confirm button")
    console.wait(lambda d: "REVERSED" in d.find_element(By.ID, "order-status").text, "REVERSED on the page")
    order = api.wait_order(order_id, lambda o: o["status"] == "REVERSED", "REVERSED")
    assert order["steps"]["reservation"] == "RELEASED", order["steps"]
    assert "customer called" in order["failure_reason"], order["failure_reason"]
    assert not console.css("#action-cancel"), "cancel still offered on a reversed order"


@check("a parked order is resumed from the console and completes")
def resume(console, api):
    order_id = api.create_order()
    api.wait_order(order_id, lambda o: o["status"] == "STOCK_RESERVED", "STOCK_RESERVED")
    status, body = api.call("POST", f"/api/orders/{order_id}/pay", {"outcome": "approve"}, admin=False)
    assert status == 202, (status, body)
    api.wait_order(order_id, lambda o: o.get("parked_reason"), "parking")
    console.open("/console/#/parked")
    console.wait(lambda d: "failed" in d.find_element(By.CSS_SELECTOR, f'tr[data-order-id="{order_id}"]').text,
                 "the order listed with why it is parked")
    console.shot("parked")
    console.click(f'.action-resume[data-order-id="{order_id}"]', "its resume button")
    order = api.wait_order(order_id, lambda o: o["status"] == "CONFIRMED", "CONFIRMED after the resume")
    assert not order.get("parked_reason"), order
    assert any(h["event"] == "resumed" for h in order["history"]), order["history"]
    console.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-order-id="{order_id}"]'),
                 "the order leaving the parked list")
    return order_id


@check("a dead letter is replayed from the console")
def replay(console, api, order_id):
    deadline = time.time() + WAIT
    while True:
        letters = api.get("/api/admin/dead-letters")["dead_letters"]
        mine = [d for d in letters if order_id in d["body"]]
        if mine:
            break
        if time.time() > deadline:
            raise AssertionError(f"no dead letter for {order_id}: {letters}")
        time.sleep(0.3)
    before = api.get("/api/admin/dead-letters")["total"]
    console.open("/console/#/dead-letters")
    letter_id = mine[0]["id"]
    console.wait(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, f'.action-replay[data-id="{letter_id}"]')), "its replay button")
    console.shot("dead-letters")
    history = api.get(f"/api/orders/{order_id}", admin=False)["history"]
    console.click(f'.action-replay[data-id="{letter_id}"]', "its replay button")
    console.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, f'.dead-letter[data-id="{letter_id}"]'),
                 "the replayed letter leaving the list")
    deadline = time.time() + WAIT
    while api.get("/api/admin/dead-letters")["total"] >= before:
        if time.time() > deadline:
            raise AssertionError("the dead-letter count did not drop")
        time.sleep(0.3)
    time.sleep(1)
    after = api.get(f"/api/orders/{order_id}", admin=False)
    assert after["status"] == "CONFIRMED" and after["history"] == history, "a replayed duplicate changed the order"


@check("the orders list, the inventory and the invariants pages show the API's data")
def other_pages(console, api, order_id):
    console.open("/console/#/orders")
    console.wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'#orders-table tr[data-order-id="{order_id}"]')), "the order in the list")
    console.shot("orders")
    console.open("/console/#/inventory")
    console.wait(EC.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-sku="KB-001"]')), "KB-001")
    items = {i["sku"]: i for i in api.get("/api/inventory", admin=False)["items"]}
    row = console.driver.find_element(By.CSS_SELECTOR, 'tr[data-sku="CB-004"]')
    row.find_element(By.CSS_SELECTOR, "input.adjust").send_keys("5")
    row.find_element(By.CSS_SELECTOR, "button").click()
    deadline = time.time() + WAIT
    while api.get("/api/inventory/CB-004", admin=False)["available"] != items["CB-004"]["available"] + 5:
        if time.time() > deadline:
            raise AssertionError("the stock edit did not reach the API")
        time.sleep(0.2)
    console.shot("inventory")
    console.open("/console/#/invariants")
    console.click("#run-invariants", "the run button")
    console.wait(EC.presence_of_element_located((By.ID, "invariants-verdict")), "the report")
    assert not console.css("#cancel-form:not([hidden])"), "a hidden form shows"


@check("on a phone-sized screen the pages fit the width")
def phone(console, api, order_id):
    console.driver.set_window_size(390, 844)
    try:
        for path, ready in (("/console/#/overview", "#overview-cards .card"),
                            ("/console/#/orders", "#orders-table"),
                            (f"/console/#/orders/{order_id}", "#timeline li")):
            console.open(path)
            console.wait(EC.presence_of_element_located((By.CSS_SELECTOR, ready)), path)
            overflow = console.driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{path} is {overflow}px wider than the screen"
        console.open("/console/#/overview")
        console.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#overview-cards .card")), "overview")
        console.shot("overview-phone")
    finally:
        console.driver.set_window_size(1280, 900)


@check("logout locks the pages again")
def logout(console, api):
    console.open("/console/#/overview")
    console.wait(EC.element_to_be_clickable((By.ID, "logout")), "the logout button").click()
    console.wait(EC.presence_of_element_located((By.ID, "token")), "the login form")
    assert console.driver.get_cookie("oos_console") is None, console.driver.get_cookie("oos_console")
    console.open("/console/#/orders")
    console.wait(EC.presence_of_element_located((By.ID, "token")), "the login form after logout")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--screenshots")
    args = parser.parse_args()
    if args.screenshots:
        os.makedirs(args.screenshots, exist_ok=True)
    api = Api(args.url, args.token)
    driver = browser()
    console = Console(driver, args.url, args.screenshots)
    try:
        locked(console, api)
        cancelled = api.create_order()
        waiting = api.create_order("MS-002")
        for order_id in (cancelled, waiting):
            api.wait_order(order_id, lambda o: o["status"] == "STOCK_RESERVED", "STOCK_RESERVED")
        login(console, api)
        overview(console, api, [cancelled, waiting])
        timeline(console, api, waiting)
        cancel(console, api, cancelled)
        resumed = resume(console, api)
        replay(console, api, resumed)
        other_pages(console, api, waiting)
        phone(console, api, waiting)
        logout(console, api)
    except Exception:
        traceback.print_exc()
        if args.screenshots:
            driver.save_screenshot(os.path.join(args.screenshots, "failure.png"))
        return 1
    finally:
        driver.quit()
    print("all console checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
